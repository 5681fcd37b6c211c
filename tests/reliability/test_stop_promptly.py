"""SIGTERM stops the agent and the engine within 2 s while their broker is unreachable, so
systemd's stop never runs into TimeoutStopSec (issue 10, item 9).

"refused": nothing listens on the port (RST at once). "blackholed": inside a network namespace
of the test's own, the broker's address routes into a veth whose other end drops every packet,
so connect() hangs for paho's whole connect timeout, as behind a dead link or a firewall.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fixtures import free_port, wait_for

CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
BLACKHOLE = "10.77.0.2"


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(params=["refused", "blackholed"])
def unreachable(request):
    """(prefix to run a command with, broker URL) for a broker that cannot be reached."""
    if request.param == "refused":
        yield [], f"mqtt://127.0.0.1:{free_port()}"
        return
    ns = request.getfixturevalue("netns")
    ns.run("ip", "link", "add", "bh0", "type", "veth", "peer", "name", "bh1")
    for link in ("bh0", "bh1"):
        ns.run("ip", "link", "set", link, "up")
    ns.run("ip", "addr", "add", "10.77.0.1/24", "dev", "bh0")
    # a fixed neighbour entry: no ARP failure, the SYNs go out and nobody ever answers
    ns.run("ip", "neigh", "add", BLACKHOLE, "lladdr", "02:00:00:00:00:02", "dev", "bh0", "nud", "permanent")
    yield ["ip", "netns", "exec", ns.name], f"mqtt://{BLACKHOLE}:1883"


def _stop_time(proc: subprocess.Popen) -> float:
    """Seconds from SIGTERM to exit; fails if the process is still running 2 s later."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("still running 2 s after SIGTERM")
    return time.monotonic() - start


def test_the_agent_stops_within_2s_of_sigterm_with_its_broker_unreachable(unreachable, tmp_path):
    prefix, broker = unreachable
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(prefix + ["garrison-agent", "run", "--thing", "stopper", "--broker", broker,
                                      "--interval", "300", "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=CLI_ENV)
    try:
        wait_for(lambda: "agent started" in log.read_text(), 30, "the agent to start")
        # it is now waiting for its first connection (and, blackholed, inside connect())
        assert _stop_time(proc) < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    text = log.read_text()
    assert "received SIGTERM" in text and "Traceback" not in text, text


def test_the_engine_stops_within_2s_of_sigterm_with_its_broker_unreachable(unreachable, tmp_path):
    prefix, broker = unreachable
    log = tmp_path / "engine.log"
    proc = subprocess.Popen(prefix + ["garrison-detect", "serve", "--broker", broker, "--db",
                                      str(tmp_path / "engine.db")],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=CLI_ENV)
    try:
        # the ingest worker and paho's network thread run: the signal handlers are installed
        # and the engine is waiting for its broker
        wait_for(lambda: proc.poll() is None and _threads(proc.pid) >= 4, 30, "the engine to start connecting")
        assert _stop_time(proc) < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_the_engines_mqtt_side_lets_go_at_once_between_reconnect_attempts():
    """With the broker unreachable, paho's thread sleeps between attempts in 1 s steps: the old
    disconnect waited that out (about 1 s of the engine's stop, which a loaded machine pushed
    past the 2 s above); with nothing to send there is nothing to wait for."""
    import threading

    from garrison.detect.ingest.frontdoor import Ingestor
    from garrison.detect.ingest.mqtt import MqttIngest
    from ledger import MemoryLedger

    ingest = MqttIngest(f"mqtt://127.0.0.1:{free_port()}", Ingestor(MemoryLedger()), client_id="let-go")
    failed = threading.Event()
    ingest._client.on_connect_fail = lambda *args: failed.set()
    ingest.start()
    try:
        assert failed.wait(10)   # refused: paho's thread is now asleep until its next attempt
        ingest.stop(disconnect=False)
        started = time.monotonic()
        ingest.disconnect()
        assert time.monotonic() - started < 0.5
        assert not ingest.connected.is_set()
    finally:
        ingest.stop()
