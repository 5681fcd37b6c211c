"""The systemd units: hardening measured by systemd-analyze, and the agent run exactly as the
unit runs it (flags, credentials, state directory, sd_notify READY/WATCHDOG/STOPPING)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from garrison.agent import report
from garrison.agent.transports.paho_compat import new_client
from fixtures import wait_for
from pkg_units import AGENT_UNIT, DETECT_UNIT, PACKAGING, environment, exec_argv, read_unit, setting

MAX_EXPOSURE = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def exposure(unit_path: Path) -> float:
    """The overall exposure score of `systemd-analyze security --offline=yes` (0 safe .. 10)."""
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit_path)],
                          capture_output=True, text=True, timeout=60)
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze is older than 250 (no --offline)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, f"no exposure score in output:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", [AGENT_UNIT, DETECT_UNIT], ids=lambda p: p.name)
def test_exposure_score_at_most_2(unit):
    score = exposure(unit)
    print(f"{unit.name}: exposure {score}")
    assert score <= MAX_EXPOSURE


@needs_analyze
def test_exposure_parser_sees_a_weaker_unit(tmp_path):
    """The score really moves: without the sandbox the same unit scores far worse."""
    weak = tmp_path / "weak.service"
    weak.write_text("[Service]\nExecStart=/usr/bin/garrison-agent run\n")
    assert exposure(weak) > 8.0


@needs_analyze
@pytest.mark.parametrize("unit", [AGENT_UNIT, DETECT_UNIT], ids=lambda p: p.name)
def test_unit_has_no_unknown_or_misspelt_settings(unit, tmp_path):
    """systemd-analyze verify flags unknown keys and bad values; the binary's absence is expected."""
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert problems == []


def test_agent_unit_hardening_essentials():
    unit = read_unit(AGENT_UNIT)
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0 and service["Restart"] == "on-failure"
    assert service["DynamicUser"] == "yes" and service["CapabilityBoundingSet"] == ""
    assert service["StateDirectory"] == "garrison-agent"
    assert service["LoadCredential"] == "device.key:/etc/garrison/device.key"
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # The agent must see the host's network and read /proc/net: these would blind it.
    assert "PrivateNetwork" not in service and service.get("ProcSubset", "all") == "all"
    assert service["UMask"] == "0077" and service["ProtectSystem"] == "strict"


def test_agent_exec_start_flags_exist():
    """Every flag in ExecStart is one `garrison-agent run` accepts (no silent typo)."""
    from garrison.agent import config
    argv = exec_argv(read_unit(AGENT_UNIT), {"CREDENTIALS_DIRECTORY": "/c", "STATE_DIRECTORY": "/s"})
    assert argv[:2] == ["/usr/bin/garrison-agent", "run"]
    flags = [word for word in argv if word.startswith("--")]
    known = {opt.flag for opt in config.OPTIONS if "run" in opt.commands} | {"--config"}
    assert flags and set(flags) <= known
    assert argv[argv.index("--key") + 1] == "/c/device.key"
    assert argv[argv.index("--state-dir") + 1] == "/s"


def test_detect_exec_start_matches_engine_cli():
    pytest.importorskip("garrison.detect.cli", reason="the detect engine CLI is not there yet")
    unit = read_unit(DETECT_UNIT)
    argv = exec_argv(unit, {**environment(unit), "STATE_DIRECTORY": "/s"})
    assert argv[:2] == ["/usr/bin/garrison-detect", "serve"]
    helptext = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "serve", "--help"], capture_output=True,
                              text=True, timeout=60)
    assert helptext.returncode == 0, helptext.stderr
    for flag in (word for word in argv if word.startswith("--")):
        assert flag in helptext.stdout, f"garrison-detect serve has no {flag}"
    assert argv[argv.index("--broker") + 1] == "mqtt://127.0.0.1:1883"


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; records every datagram."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue

    def wait_for(self, predicate, timeout=60.0) -> bool:
        """Whether the messages came to satisfy `predicate` within `timeout` (the caller says what
        it saw when not)."""
        try:
            return bool(wait_for(lambda: predicate(list(self.messages)), timeout, "notify messages"))
        except AssertionError:
            return False

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _render_shipped_config(path: Path, broker_url: str, ca: Path, cert: Path, thing: str) -> None:
    """packaging/config/agent.toml with the broker and certificate paths of this test."""
    text = (PACKAGING / "config" / "agent.toml").read_text()
    for key, value in (("broker", broker_url), ("ca", str(ca)), ("cert", str(cert))):
        text, count = re.subn(rf'^{key} = ".*"$', f'{key} = "{value}"', text, flags=re.M)
        assert count == 1, f"shipped agent.toml has no single `{key} = ...` line"
    text = text.replace("#thing = ", "thing = ").replace('"pump-17"', f'"{thing}"')
    text = re.sub(r"^interval = .*$", "interval = 0.5", text, flags=re.M)
    path.write_text(text)


def test_agent_runs_as_the_unit_runs_it(tmp_path, tls_mosquitto, certs):
    """ExecStart with the shipped config, the key handed over as a credential, READY=1 then
    repeated WATCHDOG=1 on NOTIFY_SOCKET, reports reaching the broker, STOPPING=1 on SIGTERM."""
    unit = read_unit(AGENT_UNIT)
    thing = "unit-test-device"
    cert, key = certs.client(thing)
    credentials, state = tmp_path / "credentials", tmp_path / "state"
    credentials.mkdir(mode=0o700)
    state.mkdir(mode=0o700)
    shutil.copy(key, credentials / "device.key")          # what LoadCredential=device.key:... does
    config_path = tmp_path / "agent.toml"
    _render_shipped_config(config_path, tls_mosquitto.url, certs.ca, cert, thing)

    argv = exec_argv(unit, {"CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(state)})
    argv[0:1] = [sys.executable, "-m", "garrison.agent.cli"]   # /usr/bin/garrison-agent, from this checkout
    argv[argv.index("--config") + 1] = str(config_path)

    received = []
    sub = new_client("observer")
    sub_cert, sub_key = certs.client("observer")
    sub.tls_set(ca_certs=str(certs.ca), certfile=str(sub_cert), keyfile=str(sub_key))
    sub.on_message = lambda client, userdata, msg: received.append(msg.payload)
    sub.connect(tls_mosquitto.host, tls_mosquitto.port)
    sub.subscribe(report.topic(thing, "json"), qos=1)
    sub.loop_start()

    listener = NotifyListener(tmp_path / "notify.sock")
    assert int(setting(unit, "WatchdogSec")) >= 30   # a slow collection on a Pi Zero must not trip it
    watchdog_usec = 3_000_000   # scaled down from WatchdogSec so the test sees several pings quickly
    env = {**os.environ, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(watchdog_usec),
           "CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": str(state)}
    env.pop("WATCHDOG_PID", None)
    agent = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ok = listener.wait_for(lambda m: "READY=1" in m and m.count("WATCHDOG=1") >= 3)
        assert ok, f"notify messages: {listener.messages}; agent stderr: {agent.stderr.read() if agent.poll() is not None else ''}"
        first_ready = listener.messages.index("READY=1")
        assert "WATCHDOG=1" in listener.messages[first_ready + 1:]
        wait_for(lambda: len(received) >= 2, 60, "two reports to reach the broker")
        decoded = report.decode(received[0], "json")
        assert decoded["header"]["version"] == "1.0" and decoded["header"]["report_id"] > 0
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        assert "STOPPING=1" in listener.messages
        assert any(state.iterdir()), "nothing written to $STATE_DIRECTORY"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        listener.close()
        sub.loop_stop()
        sub.disconnect()


