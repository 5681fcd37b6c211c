"""garrison-detect demo end to end: real broker, engine and agent processes; an alarm is seen."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from garrison.detect.ops import demo
from console_support import Browser
from fixtures import free_port


def _processes_mentioning(text: str):
    """Live processes whose command line mentions `text` (the demo's children all name its workdir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            if any(text.encode() in arg for arg in argv):
                found.append((int(entry.name), b" ".join(argv).decode(errors="replace")))
    return found


def test_demo_raises_and_clears_the_alarm(tmp_path):
    with socket.socket() as probe:  # the demo opens the profile's forbidden port on loopback
        try:
            probe.bind(("127.0.0.1", demo._trip_port()))
        except OSError:
            pytest.skip(f"port {demo._trip_port()} is taken on this machine: the demo cannot trip its alarm")
    proc = subprocess.Popen([sys.executable, "-m", "garrison.detect.ops.demo", "--duration", "30", "--interval", "6",
                             "--trip-after", "1", "--workdir", str(tmp_path), "--console-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # the console's address and token, then the device on its fleet page
        lines.append(line)
        if "reply  demo-device" in line:
            break
    console = next(re.search(r"console: (\S+)\s+\(sign in with the token (\S+)\)", line) for line in lines
                   if "console: " in line)
    browser = Browser(console.group(1).split("/console/")[0])
    browser.sign_in(console.group(2))
    assert 'data-thing="demo-device"' in browser.get("/console/fleet")[2]
    # read on through the same buffered file (communicate() would skip what it buffered already)
    rest, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=60)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out + err
    assert "report" in out and "accepted" in out and " 0 rejected" in out
    assert "audit: DEVICE_CERTIFICATE_EXPIRING_CHECK MEDIUM on demo-expiring" in out, out
    assert "ALARM   demo-device: demo/NoBackdoorListener in-alarm" in out, out
    assert "opened TCP port 4444" in out, out
    assert "CLEARED demo-device: demo/NoBackdoorListener alarm-cleared" in out, out
    # the alarm names the process behind the port: the demo itself opened it
    assert "4444/tcp opened by " in out and " pid " in out, out
    # at least: another demo running on this machine at the same moment can trip it once more
    raised, cleared = map(int, re.search(r"alarms: (\d+) raised, (\d+) cleared", out).groups())
    assert raised >= 1 and cleared >= 1, out
    # the engine stored it: the violation history survives the demo
    events = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "violations", "events", "--json",
                             "--db", str(tmp_path / "garrison.db")], capture_output=True, text=True)
    assert events.returncode == 0 and "NoBackdoorListener" in events.stdout
    # the children ran (their logs are there) and every one of them is gone
    assert (tmp_path / "engine.log").exists() and (tmp_path / "agent.log").exists()
    assert _processes_mentioning(str(tmp_path)) == []


@pytest.mark.parametrize("argv,message", [
    (["--duration", "0"], "--duration must be more than 0"),
    (["--interval", "2"], "--interval must be at least 5.5 s"),
])
def test_demo_refuses_bad_arguments(capsys, argv, message):
    assert demo.main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_profile_is_an_aws_profile_that_the_engine_loads(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "profiles", "apply", str(demo.PROFILE),
                           "--attach", "all", "--db", str(tmp_path / "g.db")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert demo._trip_port() == 4444
