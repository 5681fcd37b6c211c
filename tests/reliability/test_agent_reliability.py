"""The agent over time and with least privilege: no leaks over thousands of cycles, no root
needed to see root's sockets, no secret in its logs, a warning for a key others can read."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from garrison.agent import report as wire
from mqtt_clients import Client

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("agent_probe.py")
NOBODY = 65534


def responder(broker):
    """Answers every report like the engine would (accepted)."""
    client = Client(broker.host, broker.port, on_message=_answer).wait_connected()
    client.subscribe("$aws/things/+/defender/metrics/json")
    return client


# ------------------------------------------------------------------------------ memory

def test_thousands_of_report_cycles_do_not_leak(mosquitto, tmp_path):
    answer = responder(mosquitto)
    try:
        proc = subprocess.run([sys.executable, str(PROBE), mosquitto.url, str(tmp_path / "state"), "leak-probe",
                               "200", "3", "800"], capture_output=True, text=True, timeout=300, cwd=REPO)
    finally:
        answer.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = result["samples"]
    growth = [after["rss"] - before["rss"] for before, after in zip(samples, samples[1:])]
    # 2,400 cycles: a leak of one report (several KB) per cycle would be over 10 MB, and even
    # 1 KB per cycle shows as 800 KB in every round; allocator noise stays far below
    assert samples[-1]["rss"] - samples[0]["rss"] < 2 * 2**20, growth
    assert min(growth) < 256 * 2**10, growth             # psutil's way: some round must be flat
    assert samples[-1]["fds"] == samples[0]["fds"], samples       # no socket or file left open
    assert samples[-1]["threads"] == samples[0]["threads"], samples
    assert result["spooled"] == 0                          # every report was acknowledged
    assert result["replies"] >= result["cycles"] - 10      # and answered (the last may be in flight)


# ------------------------------------------------------------------------------ privilege

def _python_for(uid: int):
    """An interpreter user `uid` can run, with the agent's dependencies; None if there is none."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for candidate in dict.fromkeys([sys.executable, shutil.which("python3"), "/usr/bin/python3"]):
        if not candidate:
            continue
        probe = subprocess.run(_as_user(uid, candidate, "-c", "import paho.mqtt.client, cbor2, psutil, garrison.agent.cli"),
                               capture_output=True, env=env, cwd="/")
        if probe.returncode == 0:
            return candidate
    return None


def _as_user(uid: int, *argv: str):
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", *argv]


HOLDER = """
import socket, sys
tcp = socket.socket(); tcp.bind(("0.0.0.0", 4242)); tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 5353))
client = socket.create_connection(("127.0.0.1", 4242)); server, _ = tcp.accept()
print("ready", client.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("backend", ["netlink", "procfs"])
def test_collect_needs_no_root_and_sees_roots_sockets(netns, backend):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    python = _python_for(NOBODY)
    if python is None:
        pytest.skip("no Python interpreter with the agent's dependencies is usable by an unprivileged user")
    holder = netns.popen(sys.executable, "-c", HOLDER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    state = Path(tempfile.mkdtemp(prefix="garrison-nobody-"))
    try:
        word, client_port = holder.stdout.readline().split()
        assert word == "ready"
        os.chown(state, NOBODY, NOBODY)
        whoami = "import os; print(os.getuid(), os.geteuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])"
        proc = netns.run(*_as_user(NOBODY, python, "-c", whoami), env=dict(os.environ, PYTHONPATH=str(REPO)), cwd="/")
        assert proc.stdout.split() == [str(NOBODY), str(NOBODY), "0000000000000000"]  # no capabilities at all
        proc = netns.run(*_as_user(NOBODY, python, "-m", "garrison.agent.cli", "collect", "--state-dir", str(state),
                                   "--socket-backend", backend, "--include-loopback"),
                         env=dict(os.environ, PYTHONPATH=str(REPO)), cwd="/", check=False)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        metrics = report["metrics"]
        assert [p["port"] for p in metrics["listening_tcp_ports"]["ports"]] == [4242]
        assert [p["port"] for p in metrics["listening_udp_ports"]["ports"]] == [5353]
        connections = metrics["tcp_connections"]["established_connections"]["connections"]
        assert {c["remote_addr"] for c in connections} == {"127.0.0.1:4242", f"127.0.0.1:{client_port}"}
        assert report["header"]["report_id"] > 0
    finally:
        holder.stdin.close()
        holder.wait(10)
        shutil.rmtree(state, ignore_errors=True)


# ------------------------------------------------------------------------------ secrets

def _agent(*argv, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "garrison.agent.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, **(env or {})))


def test_no_secret_in_the_agents_debug_output(tls_mosquitto, certs, tmp_path):
    cert, key = certs.client("secret-keeper")
    engine_cert, engine_key = certs.client("responder")
    answer = Client(tls_mosquitto.host, tls_mosquitto.port, str(certs.ca), str(engine_cert), str(engine_key),
                    on_message=_answer).wait_connected()  # a responder over mutual TLS
    answer.subscribe("$aws/things/+/defender/metrics/json")
    password = "pa55-Very-Secret-0123456789"
    try:
        proc = _agent("run", "--once", "--thing", "secret-keeper", "--broker", f"mqtts://localhost:{tls_mosquitto.port}",
                      "--ca", str(certs.ca), "--cert", str(cert), "--key", str(key), "--username", "u",
                      "--state-dir", str(tmp_path / "state"), "--log-level", "debug", "--reply-timeout", "20",
                      env={"GARRISON_PASSWORD": password})
    finally:
        answer.close()
    assert proc.returncode == 0, proc.stderr           # the report went out and was accepted
    assert "DEBUG" in proc.stderr                      # debug logging was really on
    output = proc.stdout + proc.stderr
    key_body = "".join(line for line in Path(key).read_text().splitlines() if not line.startswith("-----"))
    for secret in (key_body, key_body[:40], key_body[-40:], password):
        assert secret not in output
    for spooled in (tmp_path / "state").rglob("*"):   # nor anything it keeps on disk
        if spooled.is_file():
            data = spooled.read_bytes()
            assert password.encode() not in data and key_body[:40].encode() not in data


def _answer(client, topic, payload):
    if topic.endswith("/json"):
        doc = wire.decode(payload, "json")
        body = {"thingName": topic.split("/")[2], "reportId": doc["header"]["report_id"],
                "status": "ACCEPTED", "timestamp": 0}
        client.client.publish(topic + "/accepted", json.dumps(body).encode(), qos=1)


@pytest.mark.parametrize("mode, warns", [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
def test_the_agent_warns_when_its_key_is_readable_by_others(tls_mosquitto, certs, tmp_path, mode, warns):
    cert, key = certs.client("loose-key")
    loose = tmp_path / "device.key"
    shutil.copy(key, loose)
    loose.chmod(mode)
    proc = _agent("run", "--once", "--thing", "loose-key", "--broker", f"mqtts://localhost:{tls_mosquitto.port}",
                  "--ca", str(certs.ca), "--cert", str(cert), "--key", str(loose),
                  "--state-dir", str(tmp_path / "state"), "--reply-timeout", "1")
    warning = [line for line in proc.stderr.splitlines() if "readable by others" in line]
    assert bool(warning) == warns, proc.stderr
    if warns:
        assert str(loose) in warning[0] and f"{mode:04o}" in warning[0]
