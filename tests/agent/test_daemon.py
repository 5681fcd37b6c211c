"""The running agent: spool across a broker outage, kill -9, SIGTERM, systemd notify."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from garrison.agent import config as cfg, report
from garrison.agent.daemon import Daemon
from agent_helpers import AGENT, Responder
from garrison.detect.ingest.validate import validate
from fixtures import free_port, wait_for


def test_broker_outage_spools_then_delivers_in_order_exactly_once(tmp_path, mosquitto):
    responder = Responder(mosquitto.host, mosquitto.port)
    daemon = Daemon(cfg.load(environ={}, thing="outage", broker=mosquitto.url, state_dir=str(tmp_path),
                             publish_timeout=5))
    daemon.start()
    try:
        assert daemon.transport.wait_connected(20)
        sent = [daemon.cycle(), daemon.cycle()]
        assert responder.wait_for("outage", 2) == sent
        responder.close()

        mosquitto.stop()
        assert wait_for(lambda: not daemon.transport.connected)
        spooled = [daemon.cycle() for _ in range(3)]
        assert [e.report_id for e in daemon.spool.entries()] == spooled

        mosquitto.start()
        responder = Responder(mosquitto.host, mosquitto.port)
        assert daemon.transport.wait_connected(30)
        daemon.sleep(0.1)                           # the loop sends the backlog once the link is back
        assert wait_for(lambda: len(responder.report_ids("outage")) >= 3) and daemon.spool.entries() == []
        last = daemon.cycle()
        assert responder.wait_for("outage", 4) == spooled + [last]
    finally:
        responder.close()
        daemon.close()


def test_spool_bound_drop_is_reported_as_custom_metric(tmp_path):
    daemon = Daemon(cfg.load(environ={}, thing="bounded", broker=f"mqtt://127.0.0.1:{free_port()}",
                             state_dir=str(tmp_path), spool_max_reports=2, collectors=["listening_tcp"]))
    ids = [daemon.cycle() for _ in range(4)]          # never started: nothing is connected
    entries = daemon.spool.entries()
    assert [e.report_id for e in entries] == ids[2:]
    assert daemon.spool.dropped == 2
    # the first report after a drop carries the count
    carried = [json.loads(daemon.spool.read(e)).get("custom_metrics", {}) for e in entries]
    assert [c.get("garrison:spool_dropped") for c in carried] == [None, [{"number": 1}]]


def _spawn(args, tmp_path, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    full_env.update(env or {})
    return subprocess.Popen(AGENT + args, stdout=subprocess.PIPE, stderr=open(tmp_path / "agent.log", "wb"),
                            env=full_env)


def test_kill_9_leaves_a_readable_spool(tmp_path):
    state = tmp_path / "state"
    proc = _spawn(["run", "--thing", "crashy", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                   "--interval", "0.02", "--jitter", "0", "--state-dir", str(state), "--format", "cbor"], tmp_path)
    try:
        assert wait_for(lambda: len(list((state / "spool").glob("*.cbor"))) >= 5, timeout=30)
    finally:
        proc.kill()
        proc.wait(10)
    files = sorted((state / "spool").glob("*.cbor"))
    assert len(files) >= 5
    for path in files:
        doc = validate(report.decode(path.read_bytes(), "cbor"))
        assert doc["header"]["report_id"] == int(path.stem)
    assert int((state / "last_report_id").read_text()) >= int(files[-1].stem)


def _notify_socket(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    return sock


def _receive_until(sock, wanted, timeout=30.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and wanted not in seen:
        try:
            seen.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
    return seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_with_systemd_notifications(tmp_path, shared_mosquitto, responder, signum):
    sock_path = str(tmp_path / "notify.sock")
    sock = _notify_socket(sock_path)
    thing = f"termed-{signum.name}"
    proc = _spawn(["run", "--thing", thing, "--broker", shared_mosquitto.url, "--interval", "300",
                   "--state-dir", str(tmp_path / "state")], tmp_path,
                  env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
    try:
        assert "READY=1" in _receive_until(sock, "READY=1")
        assert responder.wait_for(thing, 1)                     # the first report goes out at once
        assert "WATCHDOG=1" in _receive_until(sock, "WATCHDOG=1")  # fed while sleeping the interval
        proc.send_signal(signum)
        assert proc.wait(20) == 0
        assert "STOPPING=1" in _receive_until(sock, "STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    log = (tmp_path / "agent.log").read_text()
    assert f"received {signum.name}" in log and "Traceback" not in log


def test_sd_notify_abstract_socket():
    from garrison.agent import sdnotify
    name = f"garrison-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
