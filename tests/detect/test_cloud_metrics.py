"""Cloud-side metrics from what a real Mosquitto logged: devices that publish where their ACL
forbids, reconnect in a loop, flood, send an oversized message, or connect from an unexpected
address (a network namespace) each alarm; a quiet device does not."""
import json
import secrets
import subprocess
import sys
import time

import pytest

from garrison.agent.transports.paho_compat import new_client
from garrison.detect.clock import SystemClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.ingest import brokerlog
from garrison.detect.ingest.brokerlog import LogFollower
from garrison.detect.judge.cloudmetrics import BrokerView
from garrison.detect.judge.profiles import load_profile
from garrison.detect.ops.brokerconf import metrics_log_lines
from garrison.detect.state.store import Store

from engine_support import Collect, behavior, profile
from fixtures import Mosquitto, wait_for

# Lines captured from mosquitto 2.0.11 with `log_type all` (see garrison.detect.ingest.brokerlog).
CAPTURED = """\
1795994412: New connection from 127.0.0.1:48161 on port 18931.
1795994412: New client connected from 127.0.0.1:48161 as dev1 (p2, c1, k60, u'dev1').
1795994412: Sending CONNACK to dev1 (0, 0)
1795994412: Received PUBLISH from dev1 (d0, q1, r0, m1, 'allowed/x', ... (5 bytes))
1795994412: Sending PUBACK to dev1 (m1, rc0)
1795994412: Denied PUBLISH from dev1 (d0, q1, r0, m2, 'forbidden/x', ... (6 bytes))
1795994412: Sending PUBLISH to eng (d0, q0, r0, m0, '$SYS/broker/log/N', ... (62 bytes))
1795994413: Client dev1 disconnected.
1795994413: New client connected from ::1:51401 as dev1 (p2, c1, k60, u'dev1').
1795994414: Client dev1 closed its connection.
1795994415: Client cam-2 has exceeded timeout, disconnecting.
1795994415: Socket error on client cam-3, disconnecting.
1795994415: Client cam-4 disconnected, not authorised.
1795994415: Client <unknown> disconnected, not authorised.
1795994416: Received PUBLISH from evil (d0, q0, r0, m0, 'a', ... (7 bytes)) trailing junk
"""


def test_parser_reads_the_lines_mosquitto_writes():
    events = brokerlog.parse_lines(CAPTURED.splitlines())
    assert [(e.kind, e.client) for e in events] == [
        ("connect", "dev1"), ("publish-in", "dev1"), ("publish-denied", "dev1"), ("publish-out", "eng"),
        ("disconnect", "dev1"), ("connect", "dev1"), ("disconnect", "dev1"), ("disconnect", "cam-2"),
        ("disconnect", "cam-3"), ("connect-refused", "cam-4")]
    assert events[0].address == "127.0.0.1" and events[0].time_s == 1795994412
    assert events[5].address == "::1"
    assert (events[1].topic, events[1].size) == ("allowed/x", 5)
    assert (events[2].topic, events[2].size) == ("forbidden/x", 6)
    assert brokerlog.parse_line("x" * 10000 + " Received PUBLISH from a") is None


def test_view_windows_and_connection_state():
    now = [1_800_000_000_000]
    view = BrokerView(lambda: now[0])
    for event in brokerlog.parse_lines(CAPTURED.splitlines()):
        view.feed(event)
    at = 1795994420 * 1000
    assert view.value("dev1", "aws:num-connection-attempts", 300, at) == 2
    assert view.value("dev1", "aws:num-disconnects", 300, at) == 2
    assert view.value("dev1", "aws:num-authorization-failures", 300, at) == 1
    assert view.value("cam-4", "aws:num-authorization-failures", 300, at) == 1
    assert view.value("dev1", "aws:num-messages-sent", 300, at) == 1
    assert view.value("eng", "aws:num-messages-received", 300, at) == 1
    assert view.value("dev1", "aws:message-byte-size", 300, at) == 5
    assert view.value("dev1", "aws:source-ip-address", 300, at) == ["127.0.0.1", "::1"]
    assert view.connection("dev1") == (False, 1795994414000)
    # the window moves on: 10 minutes later nothing is left in a 300 s window
    assert view.value("dev1", "aws:num-connection-attempts", 300, at + 600_000) == 0
    assert view.value("dev1", "aws:message-byte-size", 300, at + 600_000) is None
    assert view.value("dev1", "aws:source-ip-address", 300, at + 600_000) == []
    assert view.value("nobody", "aws:num-messages-sent", 300, at) == 0


def test_follower_reads_appended_lines_and_rotation(tmp_path):
    path = tmp_path / "broker.log"
    path.write_text("1795994412: New client connected from 127.0.0.1:1 as old (p2, c1, k60, u'old').\n")
    seen = []
    follower = LogFollower(str(path), seen.append)
    follower._open(from_end=True)
    with open(path, "a") as out:
        out.write("1795994413: Client dev1 disconnected.\n1795994413: Client dev2 disc")
    follower.poll()
    assert [e.client for e in seen] == ["dev1"]   # from the end; the partial line waits
    with open(path, "a") as out:
        out.write("onnected.\n")
    follower.poll()
    assert [e.client for e in seen] == ["dev1", "dev2"]
    path.rename(tmp_path / "broker.log.1")         # rotated: the new file is read from its start
    path.write_text("1795994414: Client dev3 disconnected.\n")
    follower.poll()
    assert [e.client for e in seen] == ["dev1", "dev2", "dev3"]


# ------------------------------------------------------------------------------ end to end

def cloud_profile():
    return profile(
        "BrokerView",
        behavior("authz", "aws:num-authorization-failures", "less-than", {"count": 1}, durationSeconds=300),
        behavior("attempts", "aws:num-connection-attempts", "less-than", {"count": 5}, durationSeconds=300),
        behavior("disconnects", "aws:num-disconnects", "less-than", {"count": 5}, durationSeconds=300),
        behavior("sent", "aws:num-messages-sent", "less-than", {"count": 50}, durationSeconds=300),
        behavior("size", "aws:message-byte-size", "less-than", {"count": 1024}),
        behavior("source", "aws:source-ip-address", "in-cidr-set", {"cidrs": ["127.0.0.0/8"]}),
        behavior("gone", "aws:disconnect-duration", "less-than-equals", {"count": 1}),
    )


ACL = """\
pattern write devices/%u/#
pattern read devices/%u/#
"""

DEVICE = """
import sys, time
sys.path[:0] = {path!r}
from garrison.agent.transports.paho_compat import new_client
c = new_client(sys.argv[1]); c.username_pw_set(sys.argv[1])
c.connect(sys.argv[2], int(sys.argv[3])); c.loop_start()
c.publish("devices/%s/hello" % sys.argv[1], b"hi", qos=1).wait_for_publish(5)
time.sleep(0.5); c.disconnect(); c.loop_stop()
"""


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "acl").write_text(ACL)
    log_file = tmp_path / "metrics.log"
    extra = f"acl_file {tmp_path / 'acl'}\n" + metrics_log_lines(log_file)
    mosq = Mosquitto(tmp_path / "broker", extra_config=extra)
    yield mosq, log_file
    mosq.stop()


def device(broker, name):
    client = new_client(name)
    client.username_pw_set(name)
    client.connect(broker.host, broker.port)
    client.loop_start()
    wait_for(client.is_connected, what=f"{name} connected")
    return client


def veth_into(ns):
    """A veth pair between the host and `ns`: (host address, device address)."""
    octet = secrets.randbelow(200) + 20
    host_if, ns_if = f"gvh{secrets.token_hex(3)}", f"gvn{secrets.token_hex(3)}"
    subprocess.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns.name], check=True)
    host_ip, dev_ip = f"10.{octet}.77.1", f"10.{octet}.77.2"
    subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", host_if], check=True)
    subprocess.run(["ip", "link", "set", host_if, "up"], check=True)
    ns.run("ip", "addr", "add", f"{dev_ip}/30", "dev", ns_if)
    ns.run("ip", "link", "set", ns_if, "up")
    return host_if, host_ip, dev_ip


def test_misbehaving_devices_alarm_and_a_quiet_one_does_not(tmp_path, broker, netns):
    mosq, log_file = broker
    host_if, host_ip, dev_ip = veth_into(netns)
    try:
        from fixtures import free_port
        ns_port = free_port()
        mosq.config.write_text(mosq.config.read_text() + f"listener {ns_port} {host_ip}\n")
        mosq.start()
        engine = Engine(Store(tmp_path / "engine.db"), SystemClock(), Config(), alerts=Collect())
        engine.broker_view = view = BrokerView(engine.clock.now_ms)
        follower = LogFollower(str(log_file), view.feed, poll_s=0.05).start()
        engine.apply_profile(cloud_profile(), attach="all")
        names = ("quiet", "denied", "looper", "flooder", "stranger")
        for name in names:
            engine.add_thing(name)

        quiet = device(mosq, "quiet")
        quiet.publish("devices/quiet/t", b"21.5", qos=1).wait_for_publish(5)
        denied = device(mosq, "denied")
        for _ in range(3):
            denied.publish("devices/someone-else/t", b"x", qos=1).wait_for_publish(5)
        for _ in range(6):
            looper = device(mosq, "looper")
            looper.disconnect()
            looper.loop_stop()
        flooder = device(mosq, "flooder")
        for i in range(120):
            flooder.publish("devices/flooder/t", b"%d" % i, qos=0)
        flooder.publish("devices/flooder/t", b"z" * 4000, qos=1).wait_for_publish(5)
        stranger = netns.run(sys.executable, "-c", DEVICE.format(path=sys.path), "stranger", host_ip,
                             str(ns_port), timeout=30)
        assert stranger.returncode == 0, stranger.stderr

        wait_for(lambda: view.value("stranger", "aws:num-disconnects", 300, engine.clock.now_ms() + 1000) == 1
                 and view.value("flooder", "aws:num-messages-sent", 300, engine.clock.now_ms() + 1000) == 121
                 and view.value("looper", "aws:num-disconnects", 300, engine.clock.now_ms() + 1000) == 6
                 and view.value("denied", "aws:num-authorization-failures", 300, engine.clock.now_ms() + 1000) == 3,
                 what="the broker's log to show every device")
        now = engine.clock.now_ms() + 1000
        engine.evaluate_cloud_metrics(now)
        engine.sweep(now + 120_000)   # two minutes later: looper and stranger are still disconnected

        alarms = {}
        for record in engine.active_violations():
            alarms.setdefault(record["thingName"], set()).add(record["behavior"]["name"])
        assert alarms == {
            "denied": {"authz"},
            "looper": {"attempts", "disconnects", "gone"},
            "flooder": {"sent", "size"},
            "stranger": {"source", "gone"},
        }
        source = next(r for r in engine.active_violations("stranger") if r["behavior"]["name"] == "source")
        assert source["lastViolationValue"] == {"cidrs": [dev_ip]}
        assert "quiet" not in alarms
        for client in (quiet, denied, flooder):
            client.disconnect()
            client.loop_stop()
        follower.stop()
    finally:
        subprocess.run(["ip", "link", "delete", host_if], check=False)


def test_profile_on_a_metric_without_a_source_is_warned_about(tmp_path):
    from garrison.detect.cli import main
    db = str(tmp_path / "e.db")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(cloud_profile()))
    result = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", db, "profiles", "apply", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "aws:num-authorization-failures" in result.stderr and "no datapoints" in result.stderr
    engine = Engine(Store(db), SystemClock(), Config())
    assert engine.unsourced_metrics(load_profile(cloud_profile())) == [
        "aws:message-byte-size", "aws:num-authorization-failures", "aws:num-connection-attempts",
        "aws:num-disconnects", "aws:num-messages-sent", "aws:source-ip-address"]
    # once a `serve --broker-log` recorded its source, the same profile applies without a warning
    engine.set_cloud_metric_sources({"source": "mosquitto-log", "path": "/x",
                                     "metrics": ["aws:num-authorization-failures", "aws:num-connection-attempts",
                                                 "aws:num-disconnects", "aws:num-messages-sent",
                                                 "aws:num-messages-received", "aws:message-byte-size",
                                                 "aws:source-ip-address"]})
    result = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", db, "profiles", "apply", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "warning" not in result.stderr.lower(), result.stderr
    assert main is not None


def test_silent_but_connected_is_its_own_signal(tmp_path):
    """With a broker view, aws:disconnect-duration is the connection's state (0 while connected);
    garrison:report-silence still counts the minutes since the last report."""
    from garrison.detect.clock import ManualClock
    from engine_support import validated
    clock = ManualClock()
    engine = Engine(Store(tmp_path / "e.db"), clock, Config(), alerts=Collect())
    engine.broker_view = view = BrokerView(clock.now_ms)
    engine.apply_profile(profile("Silence",
                                 behavior("gone", "aws:disconnect-duration", "less-than-equals", {"count": 5}),
                                 behavior("mute", "garrison:report-silence", "less-than-equals", {"count": 5})),
                         attach="all")
    view.feed(brokerlog.BrokerEvent(brokerlog.CONNECT, "dev1", clock.now_ms() // 1000, address="127.0.0.1"))
    engine.accept("dev1", validated(tcp_ports=[22]), clock.now_ms())
    clock.advance(10 * 60)
    [event] = engine.sweep()                     # connected, yet 10 minutes without a report
    assert (event.behavior["name"], event.event_type, event.metric_value) == ("mute", "in-alarm", {"count": 10})
    view.feed(brokerlog.BrokerEvent(brokerlog.DISCONNECT, "dev1", clock.now_ms() // 1000))
    clock.advance(6 * 60)
    [event] = engine.sweep()                     # now really disconnected for 6 minutes
    assert (event.behavior["name"], event.metric_value) == ("gone", {"count": 6})
    with pytest.raises(Exception, match="rule"):
        load_profile(profile("S", behavior("m", "garrison:report-silence", "less-than",
                                           statisticalThreshold={"statistic": "p90"})))


# ------------------------------------------------------------------------------ dimensions

def test_topic_filters_and_their_validation():
    from garrison.detect.judge.dimensions import DimensionError, check, matches
    assert matches("devices/+/debug", "devices/cam-1/debug") and not matches("devices/+/debug", "devices/a/b/debug")
    assert matches("admin/#", "admin") and matches("admin/#", "admin/x/y") and not matches("admin/#", "adminx")
    assert matches("#", "a/b") and not matches("#", "$SYS/x") and not matches("+/x", "$aws/x")
    assert matches("a/b", "a/b") and not matches("a/b", "a/b/c") and not matches("a/b/c", "a/b")
    for bad in (["a/#/b"], ["a+/b"], [], ["x"] * 6, ["a/b#"], [""]):
        with pytest.raises(DimensionError):
            check("d", "TOPIC_FILTER", bad)
    with pytest.raises(DimensionError):
        check("d", "CLIENT_ID", ["a"])


def test_dimension_cli_api_and_use_in_profiles(tmp_path):
    from api_support import served
    db = tmp_path / "e.db"
    run = lambda *argv: subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", str(db), *argv],  # noqa
                                       capture_output=True, text=True)
    assert run("dimensions", "create", "debug", "--value", "devices/+/debug", "--value", "admin/#").returncode == 0
    assert run("dimensions", "create", "debug", "--value", "x").returncode != 0         # exists
    assert "must be the last level" in run("dimensions", "create", "bad", "--value", "a/#/b").stderr
    assert run("dimensions", "list").stdout.split() == ["debug"]
    shown = json.loads(run("dimensions", "show", "debug").stdout)
    assert shown["type"] == "TOPIC_FILTER" and shown["stringValues"] == ["devices/+/debug", "admin/#"]
    doc = profile("Dim", dict(behavior("debug", "aws:num-messages-sent", "less-than", {"count": 3}),
                              metricDimension={"dimensionName": "debug", "operator": "IN"}))
    engine = Engine(Store(db), SystemClock(), Config())
    engine.apply_profile(doc)
    missing = dict(doc, behaviors=[dict(doc["behaviors"][0], metricDimension={"dimensionName": "nope"})])
    with pytest.raises(Exception, match="no dimension named 'nope'"):
        engine.apply_profile(missing)
    assert "used by security profile(s) Dim" in run("dimensions", "delete", "debug").stderr
    with served(engine) as api:
        assert api("GET", "/dimensions") == (200, {"dimensionNames": ["debug"]})
        assert api("POST", "/dimensions/other", {"type": "TOPIC_FILTER", "stringValues": ["x/+"]})[0] == 200
        assert api("POST", "/dimensions/bad", {"stringValues": ["a/#/b"]})[0] == 400
        assert api("PUT", "/dimensions/other", {"stringValues": ["y/#"]})[1]["stringValues"] == ["y/#"]
        assert api("GET", "/dimensions/other")[1]["type"] == "TOPIC_FILTER"
        assert api("DELETE", "/dimensions/debug")[0] == 400          # in use
        assert api("DELETE", "/dimensions/other")[0] == 200
        assert api("GET", "/dimensions/other")[0] == 404
        assert api("GET", "/dimensions") == (200, {"dimensionNames": ["debug"]})


def test_dimensions_narrow_message_and_authorization_metrics(tmp_path, broker):
    mosq, log_file = broker
    mosq.start()
    engine = Engine(Store(tmp_path / "engine.db"), SystemClock(), Config(), alerts=Collect())
    engine.broker_view = view = BrokerView(engine.clock.now_ms)
    follower = LogFollower(str(log_file), view.feed, poll_s=0.05).start()
    engine.create_dimension("debug", "TOPIC_FILTER", ["devices/+/debug"])
    engine.create_dimension("others", "TOPIC_FILTER", ["devices/someone-else/#"])
    engine.apply_profile(profile(
        "Dims",
        dict(behavior("debug-msgs", "aws:num-messages-sent", "less-than", {"count": 3}),
             metricDimension={"dimensionName": "debug"}),
        dict(behavior("non-debug-msgs", "aws:num-messages-sent", "less-than", {"count": 8}),
             metricDimension={"dimensionName": "debug", "operator": "NOT_IN"}),
        dict(behavior("snooping", "aws:num-authorization-failures", "less-than", {"count": 1}),
             metricDimension={"dimensionName": "others"}),
    ), attach="all")
    for name in ("chatty", "debugger", "snoop"):
        engine.add_thing(name)
    chatty = device(mosq, "chatty")        # 10 telemetry messages: NOT_IN debug alarms, IN debug does not
    for i in range(10):
        chatty.publish("devices/chatty/telemetry", b"%d" % i, qos=1).wait_for_publish(5)
    debugger = device(mosq, "debugger")    # 4 debug messages: IN debug alarms
    for i in range(4):
        debugger.publish("devices/debugger/debug", b"%d" % i, qos=1).wait_for_publish(5)
    snoop = device(mosq, "snoop")          # denied on another device's topic and on an admin topic
    snoop.publish("devices/someone-else/cmd", b"x", qos=1).wait_for_publish(5)
    snoop.publish("admin/reboot", b"x", qos=1).wait_for_publish(5)
    later = lambda: engine.clock.now_ms() + 1000  # noqa: E731
    wait_for(lambda: view.value("chatty", "aws:num-messages-sent", 300, later()) == 10
             and view.value("debugger", "aws:num-messages-sent", 300, later()) == 4
             and view.value("snoop", "aws:num-authorization-failures", 300, later()) == 2, what="the broker log")
    engine.evaluate_cloud_metrics(later())
    alarms = {(r["thingName"], r["behavior"]["name"]): r["lastViolationValue"] for r in engine.active_violations()}
    assert alarms == {("chatty", "non-debug-msgs"): {"count": 10}, ("debugger", "debug-msgs"): {"count": 4},
                      ("snoop", "snooping"): {"count": 1}}
    # the history keeps the value under the dimension's name
    kept = engine.list_metric_values("debugger", "aws:num-messages-sent", dimension_name="debug")
    assert [d["value"] for d in kept["metricDatumList"]] == [{"count": 4}]
    kept = engine.list_metric_values("chatty", "aws:num-messages-sent", dimension_name="debug",
                                     dimension_operator="NOT_IN")
    assert [d["value"] for d in kept["metricDatumList"]] == [{"count": 10}]
    for client in (chatty, debugger, snoop):
        client.disconnect()
        client.loop_stop()
    follower.stop()


def test_serve_follows_the_broker_log_and_alarms(tmp_path, broker):
    """`garrison-detect serve --broker-log`: the whole path in real processes, with the profile
    from the engine's configuration (through the `profiles sync` path) and the alert on MQTT."""
    import shutil
    import signal
    mosq, log_file = broker
    (tmp_path / "acl").write_text(ACL + "\nuser garrison-detect\ntopic readwrite #\n")
    mosq.start()
    db = tmp_path / "serve.db"
    (tmp_path / "authz.json").write_text(json.dumps(
        profile("Authz", behavior("authz", "aws:num-authorization-failures", "less-than", {"count": 1}))))
    (tmp_path / "engine.toml").write_text('cloud_metrics_interval = "1s"\nbroker_log = "metrics.log"\n'
                                          '[alerts]\nmqtt = {topic = "garrison/alerts/{thing}"}\n'
                                          '[[profiles]]\nfile = "authz.json"\nattach = "all"\n')
    cli = [shutil.which("garrison-detect") or sys.executable, *([] if shutil.which("garrison-detect")
                                                                  else ["-m", "garrison.detect.cli"])]
    assert subprocess.run(cli + ["things", "add", "intruder", "--db", str(db)], capture_output=True).returncode == 0
    alerts = []
    reader = new_client("alert-reader")
    reader.username_pw_set("garrison-detect")
    reader.on_message = lambda c, u, m: alerts.append(json.loads(m.payload))
    reader.connect(mosq.host, mosq.port)
    reader.loop_start()
    reader.subscribe("garrison/alerts/#", qos=1)
    serve_log = tmp_path / "serve.log"
    with open(serve_log, "wb") as out:
        proc = subprocess.Popen(cli + ["serve", "--broker", f"mqtt://garrison-detect@{mosq.host}:{mosq.port}",
                                       "--db", str(db), "--config", str(tmp_path / "engine.toml")],
                                stdout=out, stderr=out)
    try:
        wait_for(lambda: "serving:" in serve_log.read_text() or proc.poll() is not None, 30, "serve to start")
        assert proc.poll() is None, serve_log.read_text()
        assert "cloud-side metrics from the broker log" in serve_log.read_text()
        intruder = device(mosq, "intruder")
        intruder.publish("devices/victim/cmd", b"open", qos=1).wait_for_publish(5)
        wait_for(lambda: any(a.get("thingName") == "intruder" for a in alerts), 30, "the alarm on MQTT")
        [alert] = [a for a in alerts if a["thingName"] == "intruder"]
        assert (alert["behavior"]["name"], alert["violationEventType"], alert["metricValue"]) == \
            ("authz", "in-alarm", {"count": 1})
        intruder.disconnect()
        intruder.loop_stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        reader.disconnect()
        reader.loop_stop()


def test_broker_config_writes_the_metrics_log(tmp_path):
    """broker-config --metrics-log: the file is the broker's one log destination, with debug
    (publishes, denials) and epoch timestamps; a different --log-file is refused (Mosquitto
    writes one log file), and the same one is accepted (the audit reads it too)."""
    from garrison.detect.ops import brokerconf, pki
    ca = pki.FleetCA(tmp_path / "pki")
    ca.init()
    cert, key = ca.issue_server(["localhost"])
    log = tmp_path / "metrics.log"
    conf, _ = brokerconf.write(tmp_path / "out", ca.cert_path, cert, key, metrics_log=log)
    lines = [line.strip() for line in conf.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert [line for line in lines if line.startswith("log_dest")] == [f"log_dest file {log.resolve()}"]
    assert "log_type all" in lines and "log_timestamp_format %s" in lines
    with pytest.raises(brokerconf.BrokerConfigError, match="one log file"):
        brokerconf.write(tmp_path / "out2", ca.cert_path, cert, key, metrics_log=log, log_file=tmp_path / "other.log")
    brokerconf.write(tmp_path / "out3", ca.cert_path, cert, key, metrics_log=log, log_file=log)
