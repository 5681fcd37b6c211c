"""The cloud-side metrics when the fleet runs on NATS: a `serve --nats --nats-monitor` worker polls
every node's /connz (garrison.detect.ingest.natsmonitor) into the BrokerView, on a real 3-node
cluster and a real PostgreSQL. A device that reconnects in a loop and one that floods alarm, with
their alerts coming back through NATS; a quiet device does not."""
import json

from garrison.agent import report as wire
from garrison.agent.transports.paho_compat import new_client
from fixtures import wait_for

from engine_support import build
from world import Device, Worker, cli, reports_stored

CONFIG = 'sweep_interval = "1s"\nfleet_stats_interval = "1s"\ncloud_metrics_interval = "1s"\n' \
         '[alerts]\nlog = true\nmqtt = {topic = "garrison/alerts/{thing}", qos = 1}\n'


def broker_profile():
    def behavior(name, metric, count):
        return {"name": name, "metric": metric, "criteria": {"comparisonOperator": "less-than",
                                                             "value": {"count": count}, "durationSeconds": 300}}
    return {"securityProfileName": "Broker", "behaviors": [
        behavior("attempts", "aws:num-connection-attempts", 5),
        behavior("disconnects", "aws:num-disconnects", 5),
        behavior("sent", "aws:num-messages-sent", 50),
        {"name": "source", "metric": "aws:source-ip-address",
         "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["127.0.0.0/8"]}}}]}


def thing(port, name, keep=True):
    """A device whose MQTT client id is its thing name: connects, reports once and waits for /accepted."""
    client = new_client(name)
    accepted = []
    client.on_message = lambda c, u, msg: accepted.append(msg.topic)
    client.on_connect = lambda c, *a: c.subscribe(wire.topic(name, "json") + "/accepted", 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = wire.encode(build(connections=1), "json")
    for _ in range(10):   # resent until answered (the first subscription may still be settling)
        client.publish(wire.topic(name, "json"), payload, qos=1)
        try:
            wait_for(lambda: accepted, 3, f"{name}'s /accepted")
            break
        except AssertionError:
            continue
    assert accepted, f"no /accepted for {name}"
    if not keep:
        client.disconnect()
        client.loop_stop()
    return client


def behaviors_in_alarm(dsn, name):
    return {v["behavior"]["name"] for v in json.loads(cli(dsn, "violations", "list", "--active", "--thing", name,
                                                          "--json").stdout)}


def last_values(dsn, name, at_least):
    """The active violations' last values for a thing, or None while any is below `at_least`."""
    values = {v["behavior"]["name"]: v["lastViolationValue"]["count"] for v in json.loads(
        cli(dsn, "violations", "list", "--active", "--thing", name, "--json").stdout)}
    return values if values and min(values.values()) >= at_least else None


def test_reconnecting_and_flooding_devices_alarm_from_nats_connz_a_quiet_one_does_not(
        nats_cluster, pg_database, tmp_path):
    monitors = ",".join(node.monitor_url for node in nats_cluster.nodes)
    worker = Worker(tmp_path, nats_cluster.urls, pg_database, extra=("--nats-monitor", monitors))
    worker.config.write_text(CONFIG)
    worker.start()
    observer = Device("127.0.0.1", nats_cluster.nodes[0].mqtt_port, name="observer")
    clients = []
    try:
        path = tmp_path / "broker.json"
        path.write_text(json.dumps(broker_profile()))
        applied = cli(pg_database, "profiles", "apply", str(path), "--attach", "all")
        # the worker recorded its source: NATS computes these four, so nothing is unsourced
        assert "no datapoints" not in applied.stderr, applied.stderr
        sizes = tmp_path / "sizes.json"
        sizes.write_text(json.dumps({"securityProfileName": "Sizes", "behaviors": [
            {"name": "size", "metric": "aws:message-byte-size",
             "criteria": {"comparisonOperator": "less-than", "value": {"count": 1024}}}]}))
        warned = cli(pg_database, "profiles", "apply", str(sizes))
        assert "aws:message-byte-size get no datapoints" in warned.stderr and "/connz" in warned.stderr

        clients.append(thing(nats_cluster.nodes[0].mqtt_port, "quiet-1"))
        flooder = thing(nats_cluster.nodes[1].mqtt_port, "flooder-1")
        clients.append(flooder)
        for i in range(120):
            flooder.publish("fleet/flooder-1/noise", b"x" * 64, qos=0)
        thing(nats_cluster.nodes[2].mqtt_port, "looper-1", keep=False)
        for i in range(7):   # on two nodes: each node's /connz is read
            thing(nats_cluster.nodes[1 + i % 2].mqtt_port, "looper-1", keep=False)

        wait_for(lambda: behaviors_in_alarm(pg_database, "looper-1") == {"attempts", "disconnects"}, 30,
                 "the looper's alarms")
        wait_for(lambda: behaviors_in_alarm(pg_database, "flooder-1") == {"sent"}, 30, "the flooder's alarm")
        [alert] = wait_for(lambda: [a for a in observer.alerts("flooder-1", "in-alarm")], 15,
                           "the flooder's alert through NATS")
        # the alarm fires at the first evaluation over 50: a /connz poll may land in the middle of
        # the burst, so the alert carries the in-alarm event's value, and the stored value
        # catches up to all 120 messages a poll later
        [raised] = [e for e in json.loads(cli(pg_database, "violations", "events", "--thing", "flooder-1",
                                              "--json").stdout) if e["violationEventType"] == "in-alarm"]
        assert alert["behavior"]["name"] == "sent" and alert["metricValue"] == raised["metricValue"]
        assert alert["metricValue"]["count"] >= 50
        counted = wait_for(lambda: last_values(pg_database, "flooder-1", at_least=120), 20,
                           "the flooder's 120 messages counted")
        assert set(counted) == {"sent"}
        # the alarm fires as the count passes 5; the last connections reach a later poll of /connz,
        # so the recorded value catches up to all eight within a few polls
        looper = wait_for(lambda: last_values(pg_database, "looper-1", at_least=8), 20,
                          "the looper's eight attempts and disconnects counted")
        assert set(looper) == {"attempts", "disconnects"}
        # the quiet device is under the same profile (attached to all: it reported) and conforms
        assert reports_stored(pg_database)["quiet-1"] == 1
        assert behaviors_in_alarm(pg_database, "quiet-1") == set()
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        observer.close()
        assert worker.stop() == 0, worker.text()
