"""The process behind a port: the agent names the owner of each listening port and connection
(a real listener of a real process), the validator accepts and bounds the extension, and the
engine's violation, its alert and `violations list` say who opened the port."""
import os
import pwd
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from garrison.agent import owners, report
from garrison.agent.collect import ReportCollector
from garrison.detect.clock import ManualClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.ingest.validate import Invalid, validate
from garrison.detect.state.store import Store

from engine_support import Collect, behavior, profile
from fixtures import free_port, wait_for

LISTENER = "import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); " \
           "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); print('up', flush=True); time.sleep(60)"


@pytest.fixture
def listener():
    port = free_port("0.0.0.0")
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    yield port, proc
    proc.kill()
    proc.wait()


def collect(tmp_path, socket_owners=True):
    collector = ReportCollector(tmp_path / "state", ["listening_tcp", "connections"], persist=False,
                                socket_owners=socket_owners)
    built, _ = collector.collect(1)
    return built


def test_agent_names_the_owner_of_a_listening_port(tmp_path, listener):
    port, proc = listener
    built = collect(tmp_path)
    [entry] = [e for e in built["metrics"]["socket_owners"]["listening_ports"] if e["port"] == port]
    assert entry["pid"] == proc.pid and entry["protocol"] == "tcp"
    assert entry["executable"] == os.path.realpath(sys.executable)
    assert entry["user"] == pwd.getpwuid(os.geteuid()).pw_name
    assert validate(report.to_short(built) if hasattr(report, "to_short") else built)["metrics"]["socket_owners"]
    assert "socket_owners" not in collect(tmp_path, socket_owners=False)["metrics"]


def test_the_extension_is_off_towards_aws():
    base = dict(socket_owners="auto", broker_address=("broker.example", 8883), transport="mqtt")
    assert owners.enabled(SimpleNamespace(**base))
    assert not owners.enabled(SimpleNamespace(**dict(base, transport="awsiot")))
    assert not owners.enabled(SimpleNamespace(**dict(base, broker_address=("a1b2-ats.iot.eu-west-1.amazonaws.com", 8883))))
    assert not owners.enabled(SimpleNamespace(**dict(base, socket_owners="off")))


def _with_owners(entries):
    return {"header": {"report_id": 1, "version": "1.0"},
            "metrics": {"listening_tcp_ports": {"ports": [{"port": 22}], "total": 1},
                        "socket_owners": {"listening_ports": entries, "connections": []}}}


def test_validator_bounds_the_extension():
    ok = {"port": 4444, "protocol": "tcp", "pid": 812, "process": "nc", "executable": "/usr/bin/nc", "user": "www-data"}
    assert validate(_with_owners([ok]))["metrics"]["socket_owners"]["listening_ports"] == [ok]
    for bad in ([dict(ok, pid=0)], [dict(ok, protocol="icmp")], [dict(ok, executable="x" * 5000)],
                [dict(ok, port=70000)], [ok] * 1001):
        with pytest.raises(Invalid):
            validate(_with_owners(bad))


def test_violation_alert_and_list_name_the_process(tmp_path, listener):
    port, proc = listener
    built = collect(tmp_path)
    clock = ManualClock()
    db = tmp_path / "engine.db"
    alerts = Collect()
    engine = Engine(Store(db), clock, Config(), alerts=alerts)
    others = [p["port"] for p in built["metrics"]["listening_tcp_ports"]["ports"] if p["port"] != port]
    engine.apply_profile(profile("Ports", behavior("ports", "aws:listening-tcp-ports", "in-port-set",
                                                   {"ports": others})), attach="all")   # only ours violates
    [event] = [e for e in engine.accept("dev1", validate(built), clock.now_ms()) if e.event_type == "in-alarm"]
    user = pwd.getpwuid(os.geteuid()).pw_name
    expected = f"{port}/tcp opened by {os.path.realpath(sys.executable)}, pid {proc.pid}, user {user}"
    [violation] = engine.active_violations("dev1")
    info = violation["violationEventAdditionalInfo"]
    assert expected in info["explanation"]
    assert {"port": port, "protocol": "tcp", "pid": proc.pid} .items() <= [o for o in info["socketOwners"]
                                                                           if o["port"] == port][0].items()
    assert any(expected in m.get("explanation", "") for m in alerts.messages)
    listed = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "violations", "list", "--db", str(db)],
                            capture_output=True, text=True)
    assert expected in listed.stdout, listed.stdout + listed.stderr


def test_a_new_socket_after_a_report_is_named_too(tmp_path, listener):
    collector = ReportCollector(tmp_path / "state", ["listening_tcp"], persist=False, socket_owners=True)
    collector.collect(1)
    scans = collector._owner_cache.scans
    collector.collect(2)
    assert collector._owner_cache.scans == scans          # nothing new: no /proc scan
    port = free_port("0.0.0.0")
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        built, _ = collector.collect(3)
        assert collector._owner_cache.scans == scans + 1
        assert [e["pid"] for e in built["metrics"]["socket_owners"]["listening_ports"] if e["port"] == port] == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
