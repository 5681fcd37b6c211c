"""The scale-out deployment end to end: `garrison-detect serve --nats` workers on a real 3-node
NATS JetStream cluster (devices speak MQTT to its MQTT listeners) and a real PostgreSQL.

The same checks as the embedded deployment (tests/detect/test_e2e.py): AWS-exact replies, an
alarm and an alert on an attack report, visible from the CLI on the shared database; plus the
partitioning (the server's mapping and ours agree), leases taken over and handed back, and
nothing lost or applied twice when a worker is killed with -9 or a NATS node stops under load.
"""
import asyncio
import json
import signal
import time
from collections import Counter

import pytest

from garrison.agent import report as wire
from garrison.detect.ingest.jetstream import STREAM, consumer_name, partition_of
from fixtures import wait_for

from engine_support import build, max_connections
from world import Device, Worker, cli, owners, reports_stored


def apply_profile(dsn, tmp_path):
    path = tmp_path / "conns.json"
    path.write_text(json.dumps(max_connections(limit=5)))
    cli(dsn, "profiles", "apply", str(path), "--attach", "all")


def test_replies_like_aws_an_alarm_and_an_alert_on_an_attack(nats_cluster, pg_database, tmp_path):
    apply_profile(pg_database, tmp_path)
    worker = Worker(tmp_path, nats_cluster.urls, pg_database).start()
    device = Device("127.0.0.1", nats_cluster.nodes[1].mqtt_port)
    try:
        report = build(connections=1)
        topic, body = device.send("calm-1", report)
        assert topic == "$aws/things/calm-1/defender/metrics/json/accepted"
        assert set(body) == {"thingName", "reportId", "status", "timestamp"}
        assert body["thingName"] == "calm-1" and body["reportId"] == report["header"]["report_id"]
        assert body["status"] == "ACCEPTED"
        topic, body = device.send("calm-1", build(connections=2), fmt="cbor", short=True)
        assert topic == "$aws/things/calm-1/defender/metrics/cbor/accepted" and body["status"] == "ACCEPTED"
        bad = build(connections=1)
        bad["custom_metrics"] = {"cpu": {"number": 1}}  # a bare object: AWS rejects it
        topic, body = device.send("calm-1", bad, payload=json.dumps(bad).encode())
        assert topic == "$aws/things/calm-1/defender/metrics/json/rejected"
        assert body["status"] == "REJECTED" and body["statusDetails"]["ErrorCode"] == "InvalidPayload"

        attack = build(connections=60)
        topic, body = device.send("victim-1", attack)
        assert topic.endswith("/accepted")
        [violation] = json.loads(cli(pg_database, "violations", "list", "--active", "--thing", "victim-1",
                                     "--json").stdout)
        assert violation["securityProfileName"] == "Conns" and violation["behavior"]["name"] == "conns"
        assert violation["lastViolationValue"] == {"count": 60}
        [alert] = wait_for(lambda: device.alerts("victim-1", "in-alarm"), 15, "the alert through NATS")
        assert alert["metricValue"] == {"count": 60} and alert["violationId"] == violation["violationId"]
        assert reports_stored(pg_database) == {"calm-1": 2, "victim-1": 1}
    finally:
        device.close()
        assert worker.stop() == 0, worker.text()


def _pending(urls):
    """partition -> reports waiting in its consumer."""
    import nats

    async def run():
        nc = await nats.connect(servers=urls)
        js = nc.jetstream()
        try:
            return {p: (await js.consumer_info(STREAM, consumer_name(p))).num_pending for p in range(4)}
        finally:
            await nc.close()
    return asyncio.run(run())


def test_nats_setup_and_the_servers_mapping_agree_on_every_things_partition(nats_cluster, pg_database):
    urls = ",".join(nats_cluster.urls)
    out = cli(pg_database, "nats-setup", "--nats", urls, "--partitions", "4").stdout
    assert "4 partitions" in out
    assert "4 partitions" in cli(pg_database, "nats-setup", "--nats", urls, "--partitions", "4").stdout  # again: no-op
    device = Device("127.0.0.1", nats_cluster.nodes[0].mqtt_port)
    things = [f"sensor-{i}" for i in range(40)]
    try:
        for thing in things:
            device.publish(thing, wire.encode(build(connections=1), "json")).wait_for_publish(10)
    finally:
        device.close()
    expected = Counter(partition_of(thing, 4) for thing in things)
    assert len(expected) == 4  # the things spread over every partition
    wait_for(lambda: _pending(nats_cluster.urls) == {p: expected[p] for p in range(4)}, 15,
             f"the reports in the partitions {dict(expected)}")
    refused = cli(pg_database, "nats-setup", "--nats", urls, "--partitions", "2", check=False)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1].startswith("garrison-detect: partition ") and "still holds" in refused.stderr


def test_partitions_are_taken_over_from_a_dead_worker_and_handed_back(nats_cluster, pg_database, tmp_path):
    second = Worker(tmp_path, nats_cluster.urls, pg_database, index=1, workers=2).start()
    first = None
    try:
        # alone, the second worker takes the partitions nobody alive prefers too
        wait_for(lambda: owners(pg_database) == {p: "garrison-detect[1,3]" for p in range(4)}, 15, "the takeover")
        first = Worker(tmp_path, nats_cluster.urls, pg_database, index=0, workers=2).start()
        wait_for(lambda: owners(pg_database) == {0: "garrison-detect[0,2]", 1: "garrison-detect[1,3]",
                                                 2: "garrison-detect[0,2]", 3: "garrison-detect[1,3]"},
                 15, "the hand-back")
        first.kill()
        started = time.monotonic()
        wait_for(lambda: owners(pg_database) == {p: "garrison-detect[1,3]" for p in range(4)}, 15, "the failover")
        assert time.monotonic() - started < 5
    finally:
        if first is not None:
            first.stop()
        assert second.stop() == 0, second.text()


def _plan(things, per_thing):
    """(thing, report id, payload) in publishing order: round after round, each thing once a round
    (a device reports once an interval), ids increasing."""
    base = int(time.time() * 1000) - 60_000  # within FIRST_SEEN_GRACE_MS: a new thing's first report
    return [(f"{thing}", base + n, wire.encode(build(connections=n % 3, report_id=base + n), "json"))
            for n in range(per_thing) for thing in things]


def _publish(device, plan, pause_every=50, pause=0.05):
    for i, (thing, _, payload) in enumerate(plan):
        device.publish(thing, payload)
        if i % pause_every == pause_every - 1:
            time.sleep(pause)


def _settle(device, dsn, plan, timeout):
    """Wait for every report to be answered, re-sending a thing's newest report when it got no
    answer (an agent re-sends the report it waits for; never an older one); then what the
    database applied."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            wait_for(lambda: device.answered() >= len(plan), 10, "every report answered")
            break
        except AssertionError:
            with device.lock:
                newest = {}
                for thing, rid, payload in plan:
                    newest[thing] = (rid, payload)
                missing = [(t, p) for t, (rid, p) in newest.items() if (t, rid) not in device.by_report]
            for thing, payload in missing:
                device.publish(thing, payload)
    return reports_stored(dsn)


def _check_exactly_once(device, stored, plan, things, per_thing):
    with device.lock:
        statuses = dict(device.by_report)
    assert set(statuses) == {(t, rid) for t, rid, _ in plan}, "some reports were never answered"
    assert {s for answers in statuses.values() for s in answers} == {"ACCEPTED"}, \
        Counter(s for answers in statuses.values() for s in answers)
    assert stored == {thing: per_thing for thing in things}  # every report applied, none twice
    return sum(len(a) - 1 for a in statuses.values())  # answered again after a redelivery


@pytest.mark.slow
def test_a_worker_killed_under_load_loses_nothing_and_applies_nothing_twice(nats_cluster, pg_database, tmp_path):
    apply_profile(pg_database, tmp_path)
    workers = [Worker(tmp_path, nats_cluster.urls, pg_database, index=i, workers=2, extra=("--batch-size", "50"))
               for i in range(2)]
    for worker in workers:
        worker.start()
    device = Device("127.0.0.1", nats_cluster.nodes[2].mqtt_port, persistent=True)
    things, per_thing = [f"load-{i}" for i in range(200)], 3
    plan = _plan(things, per_thing)
    try:
        wait_for(lambda: len(owners(pg_database)) == 4, 15, "all partitions owned")
        _publish(device, plan[:200])
        wait_for(lambda: device.answered() >= 100, 30, "the workers to be busy")
        workers[0].kill()  # mid-stream: batches in hand, unacknowledged
        _publish(device, plan[200:])
        wait_for(lambda: set(owners(pg_database).values()) == {"garrison-detect[1,3]"}, 15, "the failover")
        stored = _settle(device, pg_database, plan, 90)
        _check_exactly_once(device, stored, plan, things, per_thing)
    finally:
        device.close()
        for worker in workers:
            worker.stop()


@pytest.mark.slow
def test_reports_keep_flowing_when_the_stream_leader_node_is_killed(nats_cluster, pg_database, tmp_path):
    worker = Worker(tmp_path, nats_cluster.urls, pg_database).start()
    leader = _stream_leader(nats_cluster.urls)
    device_node = next(n for n in nats_cluster.nodes if n.name != leader)
    device = Device("127.0.0.1", device_node.mqtt_port, persistent=True)
    things, per_thing = [f"flow-{i}" for i in range(100)], 2
    plan = _plan(things, per_thing)
    try:
        _publish(device, plan[:100])
        wait_for(lambda: device.answered() >= 50, 30, "reports flowing")
        next(n for n in nats_cluster.nodes if n.name == leader).stop(signal.SIGKILL)
        _publish(device, plan[100:])
        stored = _settle(device, pg_database, plan, 90)
        _check_exactly_once(device, stored, plan, things, per_thing)
        assert _stream_leader([n.url for n in nats_cluster.nodes if n.name != leader]) != leader
    finally:
        device.close()
        assert worker.stop() == 0, worker.text()


def _stream_leader(urls):
    import nats

    async def run():
        nc = await nats.connect(servers=urls)
        try:
            return (await nc.jetstream().stream_info(STREAM)).cluster.leader
        finally:
            await nc.close()
    return asyncio.run(run())
