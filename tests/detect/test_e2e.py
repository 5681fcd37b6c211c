"""End to end: `garrison-detect serve` on a real Mosquitto, reports published with paho.

One engine process serves the whole module (things are unique per test); the last tests restart
it with the hidden --clock-offset to see two days of silence invalidate the open violations, and
an hour of silence raise aws:disconnect-duration until the device reports again.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from garrison.agent import report as wire
from garrison.agent.transports.paho_compat import new_client
from fixtures import free_port, wait_for

from engine_support import behavior, build, profile

CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]
TOKEN = "e2e-token"
CONFIG = """
sweep_interval = "1s"
fleet_stats_interval = "1s"
fleet_min_devices = 5
[alerts]
log = true
mqtt = {topic = "garrison/alerts/{thing}", qos = 1}
[[profiles]]
file = "boot-profile.json"
attach = "thing:boot-1"
"""
BOOT_PROFILE = profile("Boot", behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]}))


def cli(db, *argv):
    proc = subprocess.run(CLI + list(argv) + ["--db", str(db)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Engine:
    """A `garrison-detect serve` child process."""

    def __init__(self, workdir: Path, broker_url: str):
        self.workdir, self.broker_url = workdir, broker_url
        self.db = workdir / "engine.db"
        self.config = workdir / "engine.toml"
        self.config.write_text(CONFIG)
        (workdir / "boot-profile.json").write_text(json.dumps(BOOT_PROFILE))
        self.api_port = free_port()
        self.proc = None

    def start(self, *extra):
        self.log = self.workdir / f"serve-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                CLI + ["serve", "--broker", self.broker_url, "--db", str(self.db), "--config", str(self.config),
                       "--min-report-interval", "0", "--api-bind", f"127.0.0.1:{self.api_port}",
                       "--api-token", TOKEN, *extra], stdout=log, stderr=log)
        wait_for(lambda: "serving:" in self.log.read_text() or self.proc.poll() is not None, 30, "serve to start")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        assert self.proc.returncode == 0, self.log.read_text()

    def api(self, path):
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def api_post(self, path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


class Device:
    """A paho client that publishes reports and collects replies and alerts."""

    def __init__(self, broker):
        self.messages = []
        self.lock = threading.Lock()
        self.client = new_client(f"e2e-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([("$aws/things/+/defender/metrics/+/accepted", 1),
                               ("$aws/things/+/defender/metrics/+/rejected", 1), ("garrison/alerts/#", 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, msg):
        payload = wire.decode(msg.payload, "cbor" if "/cbor/" in msg.topic else "json")
        with self.lock:
            self.messages.append((msg.topic, payload))

    def find(self, predicate):
        with self.lock:
            return [m for m in self.messages if predicate(*m)]

    def alerts(self, thing, event_type=None):
        return [p for t, p in self.find(lambda t, p: t == f"garrison/alerts/{thing}")
                if event_type in (None, p["violationEventType"])]

    def send(self, thing, report, fmt="json", short=False, payload=None):
        """Publish until the engine replies (re-publishing the same id is safe); returns the reply."""
        payload = payload or wire.encode(report, fmt, short_names=short)
        report_id = report["header"]["report_id"]
        base = wire.topic(thing, fmt)

        def reply():
            found = self.find(lambda t, p: t.startswith(base + "/") and p.get("reportId") == report_id)
            return found[-1] if found else None

        for _ in range(10):
            self.client.publish(base, payload, qos=1)
            try:
                return wait_for(reply, 3, f"a reply to {thing}")
            except AssertionError:
                continue
        raise AssertionError(f"no reply to report {report_id} from {thing}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def world(shared_mosquitto, tmp_path_factory):
    engine = Engine(tmp_path_factory.mktemp("e2e"), shared_mosquitto.url)
    engine.start()
    device = Device(shared_mosquitto)
    yield engine, device
    device.close()
    if engine.proc.poll() is None:
        engine.stop()


def accepted(reply):
    topic, body = reply
    assert topic.endswith("/accepted"), body
    assert body["status"] == "ACCEPTED"
    return body


def active(engine, thing):
    return json.loads(cli(engine.db, "violations", "list", "--active", "--thing", thing, "--json"))


def test_replies_accepted_and_rejected_like_aws(world):
    engine, device = world
    report = build(tcp_ports=[22])
    topic, body = device.send("reply-1", report)
    assert topic == "$aws/things/reply-1/defender/metrics/json/accepted"
    assert body["thingName"] == "reply-1" and body["reportId"] == report["header"]["report_id"]
    topic, body = device.send("reply-1", build(tcp_ports=[22]), fmt="cbor", short=True)
    assert topic.endswith("/cbor/accepted") and body["status"] == "ACCEPTED"
    bad = build(tcp_ports=[22])
    bad["custom_metrics"] = {"cpu": {"number": 1}}  # a bare object, as AWS's docs show being rejected
    topic, body = device.send("reply-1", bad, payload=json.dumps(bad).encode())
    assert topic.endswith("/json/rejected") and body["statusDetails"]["ErrorCode"] == "InvalidPayload"
    assert [t["thingName"] for t in json.loads(cli(engine.db, "things", "list", "--json"))
            if t["thingName"] == "reply-1"] == ["reply-1"]


# (case, behavior, conforming report, violating report, expected lastViolationValue)
OPERATOR_CASES = [
    ("lt", behavior("b", "aws:num-established-tcp-connections", "less-than", {"count": 5}),
     dict(connections=2), dict(connections=7), {"count": 7}),
    ("le", behavior("b", "aws:num-listening-tcp-ports", "less-than-equals", {"count": 2}),
     dict(tcp_ports=[22, 80]), dict(tcp_ports=[22, 80, 443]), {"count": 3}),
    ("gt", behavior("b", "battery", "greater-than", {"number": 20}),
     dict(custom={"battery": 80}), dict(custom={"battery": 5}), {"number": 5}),
    ("ge", behavior("b", "aws:num-listening-udp-ports", "greater-than-equals", {"count": 1}),
     dict(udp_ports=[53]), dict(udp_ports=[]), {"count": 0}),
    ("inport", behavior("b", "aws:listening-tcp-ports", "in-port-set", {"ports": [22, 443]}),
     dict(tcp_ports=[22]), dict(tcp_ports=[22, 8080]), {"ports": [22, 8080]}),
    ("notinport", behavior("b", "aws:listening-udp-ports", "not-in-port-set", {"ports": [69]}),
     dict(udp_ports=[53]), dict(udp_ports=[53, 69]), {"ports": [53, 69]}),
    ("incidr", behavior("b", "aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}),
     dict(remote_ips=["10.1.2.3"]), dict(remote_ips=["10.1.2.3", "203.0.113.9"]),
     {"cidrs": ["10.1.2.3", "203.0.113.9"]}),
    ("notincidr", behavior("b", "aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["203.0.113.0/24"]}),
     dict(remote_ips=["198.51.100.1"]), dict(remote_ips=["203.0.113.7"]), {"cidrs": ["203.0.113.7"]}),
    ("inset", behavior("b", "codes", "in-set", {"numbers": [1, 2, 3]}),
     dict(custom={"codes": [1, 2]}), dict(custom={"codes": [1, 9]}), {"numbers": [1, 9]}),
    ("notinset", behavior("b", "users", "not-in-set", {"strings": ["root"]}),
     dict(custom={"users": ["pi"]}), dict(custom={"users": ["pi", "root"]}), {"strings": ["pi", "root"]}),
]


def test_profiles_from_the_config_apply_at_start(world):
    engine, device = world
    shown = json.loads(cli(engine.db, "profiles", "show", "Boot"))
    assert shown["profile"] == BOOT_PROFILE and shown["targets"] == ["thing:boot-1"]
    accepted(device.send("boot-1", build(tcp_ports=[22, 2323])))
    [violation] = active(engine, "boot-1")
    assert violation["lastViolationValue"] == {"ports": [22, 2323]}


def test_each_comparison_operator(world):
    engine, device = world
    for case, rule, _, _, _ in OPERATOR_CASES:
        doc = profile(f"Op-{case}", rule)
        if case == "lt":  # one through the CLI, the rest through the HTTP API
            path = engine.workdir / "op-lt.json"
            path.write_text(json.dumps(doc))
            cli(engine.db, "profiles", "apply", str(path), "--attach", "thing:op-lt")
        else:
            engine.api_post(f"/security-profiles/Op-{case}?target=thing:op-{case}", doc)
    for case, _, normal, _, _ in OPERATOR_CASES:
        accepted(device.send(f"op-{case}", build(**normal)))
    for case, _, _, abnormal, _ in OPERATOR_CASES:
        accepted(device.send(f"op-{case}", build(**abnormal)))
    listed = json.loads(cli(engine.db, "violations", "list", "--active", "--json"))
    by_thing = {v["thingName"]: v for v in listed if v["thingName"].startswith("op-")}
    assert sorted(by_thing) == sorted(f"op-{case}" for case, *_ in OPERATOR_CASES)
    for case, rule, _, _, expected in OPERATOR_CASES:
        violation = by_thing[f"op-{case}"]
        assert violation["securityProfileName"] == f"Op-{case}"
        assert violation["behavior"] == rule
        assert violation["lastViolationValue"] == expected, case
        [alert] = wait_for(lambda: device.alerts(f"op-{case}"), 15, f"the alert for op-{case}")
        assert alert["violationId"] == violation["violationId"] and alert["violationEventType"] == "in-alarm"
        assert alert["metricValue"] == expected and isinstance(alert["violationEventTime"], int)
    # the conforming report raised nothing: exactly one in-alarm per thing
    events = json.loads(cli(engine.db, "violations", "events", "--json"))
    assert sorted(e["thingName"] for e in events if e["thingName"].startswith("op-")) == sorted(by_thing)


def test_one_serve_per_database(world):
    engine, _ = world
    proc = subprocess.run(CLI + ["serve", "--broker", engine.broker_url, "--db", str(engine.db)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "another garrison-detect serve is running" in proc.stderr


def test_an_alarm_clears_and_verification_works_while_serving(world):
    engine, device = world
    doc = profile("Clear", behavior("b", "aws:num-established-tcp-connections", "less-than", {"count": 3},
                                    consecutiveDatapointsToClear=2))
    engine.api_post("/security-profiles/Clear?target=thing:clear-1", doc)
    accepted(device.send("clear-1", build(connections=5)))
    [violation] = active(engine, "clear-1")
    out = cli(engine.db, "violations", "verify", violation["violationId"], "TRUE_POSITIVE", "--description", "seen")
    assert "TRUE_POSITIVE" in out
    [over_http] = engine.api("/active-violations?thingName=clear-1")["activeViolations"]
    assert over_http["verificationState"] == "TRUE_POSITIVE" and over_http["verificationStateDescription"] == "seen"
    accepted(device.send("clear-1", build(connections=1)))
    assert len(active(engine, "clear-1")) == 1                      # one conforming datapoint is not enough
    accepted(device.send("clear-1", build(connections=1)))
    assert active(engine, "clear-1") == []
    [cleared] = wait_for(lambda: device.alerts("clear-1", "alarm-cleared"), 15, "the alarm-cleared alert")
    assert cleared["violationId"] == violation["violationId"] and cleared["metricValue"] == {"count": 1}


def test_durations_sum_traffic_over_the_window(world):
    engine, device = world
    engine.api_post("/security-profiles/Traffic?target=thing:bulk-1", profile(
        "Traffic", behavior("out", "aws:all-bytes-out", "less-than", {"count": 1000}, durationSeconds=300)))
    for _ in range(2):
        accepted(device.send("bulk-1", build(network_stats={"bytes_out": 400})))
    assert active(engine, "bulk-1") == []                            # 800 over the last 300 s
    accepted(device.send("bulk-1", build(network_stats={"bytes_out": 400})))
    [violation] = active(engine, "bulk-1")
    assert violation["lastViolationValue"] == {"count": 1200}


def test_percentile_of_the_fleet(world):
    engine, device = world
    cli(engine.db, "groups", "create", "stat-fleet")
    for i in range(6):
        cli(engine.db, "groups", "add", "stat-fleet", f"stat-{i}")
    engine.api_post("/security-profiles/Stat?target=group:stat-fleet", profile(
        "Stat", behavior("conns", "aws:num-established-tcp-connections", "less-than-equals",
                         statisticalThreshold={"statistic": "p90"}, durationSeconds=300)))
    for i in range(6):
        accepted(device.send(f"stat-{i}", build(connections=10 + i)))  # 10..15: p90 = 14.5

    def threshold():  # recomputed every second; wait for the one over all six devices
        known = json.loads(cli(engine.db, "profiles", "show", "Stat")).get("statisticalThresholds", {}).get("conns")
        return known if known and known["devices"] == 6 else None
    assert wait_for(threshold, 30, "the fleet threshold")["value"] == pytest.approx(14.5)
    accepted(device.send("stat-1", build(connections=14)))              # within the fleet's p90
    accepted(device.send("stat-0", build(connections=40)))
    [violation] = active(engine, "stat-0")
    assert violation["lastViolationValue"] == {"count": 40}
    assert violation["violationEventAdditionalInfo"] == {"statisticalThreshold": {"statistic": "p90"},
                                                         "thresholdValue": 14.5}
    assert active(engine, "stat-1") == []
    [alert] = wait_for(lambda: device.alerts("stat-0"), 15, "the statistical alert")
    assert alert["threshold"] == 14.5


def test_restart_keeps_everything_and_silence_invalidates(world):
    engine, device = world
    before = json.loads(cli(engine.db, "violations", "list", "--active", "--json"))
    events_before = json.loads(cli(engine.db, "violations", "events", "--json"))
    assert before
    engine.stop()
    engine.start("--clock-offset", str(3 * 86400))                   # the devices have been silent 3 days
    ids = {v["violationId"] for v in before}

    def invalidated():
        events = json.loads(cli(engine.db, "violations", "events", "--json"))
        done = {e["violationId"] for e in events if e["violationEventType"] == "alarm-invalidated"}
        return events if ids <= done else None
    events = wait_for(invalidated, 30, "the invalidation sweep")
    assert json.loads(cli(engine.db, "violations", "list", "--active", "--json")) == []
    assert events[:len(events_before)] == events_before               # history kept as it was, in order
    pairs = [(e["violationId"], e["violationEventType"]) for e in events]
    assert len(pairs) == len(set(pairs))                                # nothing duplicated
    for violation in before:
        thing = violation["thingName"]
        [alert] = wait_for(lambda: device.alerts(thing, "alarm-invalidated"), 15, f"the invalidation alert of {thing}")
        assert alert["violationId"] == violation["violationId"]
        assert alert["invalidationReason"] == "device-silent"
    engine.stop()


def test_a_silent_device_raises_disconnect_duration_until_it_reports_again(world):
    engine, device = world
    if engine.proc.poll() is not None:
        engine.start()
    engine.api_post("/security-profiles/Gone?target=thing:gone-1", profile(
        "Gone", behavior("silent", "aws:disconnect-duration", "less-than-equals", {"count": 30})))
    accepted(device.send("gone-1", build(tcp_ports=[22])))
    assert active(engine, "gone-1") == []
    engine.stop()
    engine.start("--clock-offset", "3600")                             # an hour without a report
    [alarm] = wait_for(lambda: device.alerts("gone-1", "in-alarm"), 30, "the disconnect-duration alarm")
    assert 60 <= alarm["metricValue"]["count"] <= 65                  # minutes
    engine.stop()
    engine.start("--clock-offset", "7200")                             # restarted, still silent

    def grown():
        found = active(engine, "gone-1")
        return found if found and found[0]["lastViolationValue"]["count"] >= 120 else None
    [violation] = wait_for(grown, 30, "a sweep after the restart")
    assert violation["violationId"] == alarm["violationId"]            # the same episode, not a new one
    events = json.loads(cli(engine.db, "violations", "events", "--thing", "gone-1", "--json"))
    assert [e["violationEventType"] for e in events] == ["in-alarm"]
    sent = time.time()
    accepted(device.send("gone-1", build(tcp_ports=[22])))              # back
    assert active(engine, "gone-1") == []
    [cleared] = wait_for(lambda: device.alerts("gone-1", "alarm-cleared"), 15, "the alarm-cleared alert")
    assert cleared["violationId"] == alarm["violationId"] and cleared["metricValue"] == {"count": 0}
    assert len(device.alerts("gone-1", "in-alarm")) == 1
    # the ingest dates reports with the engine's clock, so --clock-offset moves them too
    [thing] = [t for t in json.loads(cli(engine.db, "things", "list", "--json")) if t["thingName"] == "gone-1"]
    assert thing["lastReportTime"] >= sent + 7200 - 5
    engine.stop()


def test_serve_over_mutual_tls(tls_mosquitto, certs, tmp_path):
    cert, key = certs.client("garrison-detect")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(CLI + ["serve", "--broker", tls_mosquitto.url, "--db", str(tmp_path / "tls.db"),
                                       "--ca", str(certs.ca), "--cert", str(cert), "--key", str(key),
                                       "--min-report-interval", "0"], stdout=log, stderr=log)
    try:
        wait_for(lambda: "serving:" in log_path.read_text() or proc.poll() is not None, 30, "serve to start")
        assert "not reachable" not in log_path.read_text(), log_path.read_text()
        device_cert, device_key = certs.client("tls-dev")
        client = new_client("tls-dev")
        client.tls_set(ca_certs=str(certs.ca), certfile=str(device_cert), keyfile=str(device_key))
        replies = []
        client.on_message = lambda c, u, m: replies.append(json.loads(m.payload))
        client.connect(tls_mosquitto.host, tls_mosquitto.port)
        client.subscribe("$aws/things/tls-dev/defender/metrics/json/+", 1)
        client.loop_start()
        report = build(tcp_ports=[22])
        for _ in range(10):
            client.publish(wire.topic("tls-dev", "json"), wire.encode(report), qos=1)
            if _poll(lambda: replies, 3):  # re-publishing the same report id is safe
                break
        client.loop_stop()
        client.disconnect()
        assert replies and replies[0]["status"] == "ACCEPTED" and replies[0]["reportId"] == report["header"]["report_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, log_path.read_text()


def _poll(predicate, timeout):
    try:
        return wait_for(predicate, timeout)
    except AssertionError:
        return None
