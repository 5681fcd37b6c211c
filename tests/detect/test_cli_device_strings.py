"""Strings a device chooses (the process behind a port, a custom metric's strings) reach the
operator's terminal through the CLI's tables: their control characters are shown escaped, never
sent raw (an ESC sequence would clear the screen, retitle the window, or hide lines)."""
import subprocess
import sys

from garrison.detect.clock import ManualClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.ingest.validate import validate
from garrison.detect.state.store import Store

from engine_support import Collect, behavior, profile

HOSTILE = "/tmp/nc\x1b]0;owned\x07\x1b[2J\rFAKE\nLINE"


def test_violations_list_escapes_what_the_device_named(tmp_path):
    report = {
        "header": {"report_id": 1732550000000, "version": "1.0"},
        "metrics": {
            "listening_tcp_ports": {"ports": [{"port": 4444}], "total": 1},
            "socket_owners": {
                "listening_ports": [{"port": 4444, "protocol": "tcp", "pid": 5, "executable": HOSTILE}],
                "connections": [],
            },
        },
    }
    clock = ManualClock()
    db = tmp_path / "engine.db"
    engine = Engine(Store(db), clock, Config(), alerts=Collect())
    engine.apply_profile(profile("Ports", behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]})),
                         attach="all")
    assert [e.event_type for e in engine.accept("dev1", validate(report), clock.now_ms())] == ["in-alarm"]
    listed = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "violations", "list", "--db", str(db)],
                            capture_output=True, text=True, check=True)
    assert "4444/tcp opened by /tmp/nc\\x1b]0;owned\\x07\\x1b[2J\\rFAKE\\nLINE, pid 5" in listed.stdout
    assert not any(c in listed.stdout for c in "\x1b\x07\r"), repr(listed.stdout)
    assert len(listed.stdout.splitlines()) == 2  # the header and the one violation, no forged line
