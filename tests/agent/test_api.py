"""The library API for firmware, and the AWS IoT transport's construction."""
import sys

import pytest

from garrison.agent import config as cfg
from garrison.agent.api import Agent
from garrison.agent.transports.base import TransportError


def test_publish_once_with_custom_metrics(tmp_path, shared_mosquitto, responder):
    with Agent(thing="firmware-1", broker=shared_mosquitto.url, state_dir=str(tmp_path)) as agent:
        agent.add_custom_metric("pump_pressure_kpa", lambda: 101.5)
        agent.add_custom_metric("open_valves", lambda: ["v1", "v3"])
        agent.add_custom_metric("broken_sensor", lambda: 1 / 0)      # left out, logged, no crash
        reply = agent.publish_once(timeout=20)
        assert reply is not None and reply.accepted
        results = agent.last_results
        assert {"listening_tcp", "listening_udp", "established_connections", "interface_counters"} <= \
            {r.name for r in results}, [r.name for r in results]
        assert all(0 < r.duration_s < 20 for r in results), results   # each collector's run was timed
    (_, _, doc), = [r for r in responder.received if r[0] == "firmware-1"]
    own = {k: v for k, v in doc["custom_metrics"].items() if not k.startswith("posture:")}  # the posture collector's
    assert own == {"pump_pressure_kpa": [{"number": 101.5}], "open_valves": [{"string_list": ["v1", "v3"]}]}
    assert "posture:sysctl_unhardened" in doc["custom_metrics"]   # on by default
    assert doc["header"]["report_id"] == reply.report_id


def test_tick_publishes_when_due(tmp_path, shared_mosquitto, responder):
    agent = Agent(thing="ticker", broker=shared_mosquitto.url, state_dir=str(tmp_path), interval=300)
    try:
        assert agent.wait_connected(20)
        first = agent.tick(now=1000.0)
        assert first is not None
        assert agent.tick(now=1001.0) is None                  # not due yet
        second = agent.tick(now=1000.0 + 400)
        assert responder.wait_for("ticker", 2) == [first, second]
    finally:
        agent.close()


def test_failed_collector_omits_its_group_only(tmp_path):
    agent = Agent(thing="partial", state_dir=str(tmp_path), collectors=["listening_tcp", "listening_udp"],
                  socket_events="off", socket_owners="off")

    class Broken:
        name = "listening_udp"

        def collect(self):
            raise OSError("sock_diag exploded")

    agent.daemon.collector.collectors["listening_udp"] = Broken()
    doc = agent.collect()
    assert list(doc["metrics"]) == ["listening_tcp_ports"]
    failed = [r for r in agent.last_results if not r.success]
    assert len(failed) == 1 and "sock_diag exploded" in failed[0].error


def test_invalid_options_raise_config_error(tmp_path):
    with pytest.raises(cfg.ConfigError):
        Agent(thing="bad thing", state_dir=str(tmp_path))
    with pytest.raises(cfg.ConfigError):
        Agent(thing="ok", colour="blue", state_dir=str(tmp_path))
    with pytest.raises(ValueError):
        Agent(thing="ok", state_dir=str(tmp_path)).add_custom_metric("aws:sneaky", lambda: 1)


def test_awsiot_transport_without_the_extra_says_how_to_install(monkeypatch):
    from garrison.agent.transports import awsiot
    monkeypatch.setitem(sys.modules, "awsiot", None)      # import awsiot -> ImportError
    with pytest.raises(TransportError, match=r"pip install 'garrison\[aws\]'"):
        awsiot.AwsIotTransport("t", "json", endpoint="example.iot", cert="c.pem", key="k.pem")


def test_awsiot_transport_construction(certs):
    pytest.importorskip("awsiot")
    from garrison.agent.transports.awsiot import AwsIotTransport
    cert, key = certs.client("aws-thing")
    transport = AwsIotTransport("aws-thing", "cbor", endpoint="abc-ats.iot.eu-west-1.amazonaws.com",
                                cert=str(cert), key=str(key), ca=str(certs.ca))
    assert transport.reply_topics == ("$aws/things/aws-thing/defender/metrics/cbor/accepted",
                                      "$aws/things/aws-thing/defender/metrics/cbor/rejected")
    assert not transport.connected
    assert transport.publish("$aws/things/aws-thing/defender/metrics/cbor", b"\xa0", 0.1) is False


def test_loopback_traffic_shows_up_as_deltas(tmp_path):
    import socket
    agent = Agent(thing="loopy", state_dir=str(tmp_path), interfaces=["lo"], collectors=["network_stats"])
    assert agent.collect()["metrics"]["network_stats"]["bytes_in"] == 0      # fresh state: zero
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    client.sendall(b"x" * 200_000)
    got = 0
    while got < 200_000:
        got += len(peer.recv(65536))
    for s in (client, peer, server):
        s.close()
    stats = agent.collect()["metrics"]["network_stats"]
    assert stats["bytes_in"] >= 200_000 and stats["bytes_out"] >= 200_000 and stats["packets_in"] > 0


def test_state_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert cfg.load(environ={}, thing="t").state_dir == f"{tmp_path}/a"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert cfg.load(environ={}, thing="t").state_dir in (
        "/var/lib/garrison-agent", str(cfg.Path.home() / ".local" / "state" / "garrison-agent"))


def test_cli_awsiot_without_the_extra_exits_2(tmp_path, certs):
    from agent_helpers import run_agent
    shadow = tmp_path / "shadow" / "awsiot"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named awsiot')\n")
    cert, key = certs.client("aws-cli")
    result = run_agent("run", "--once", "--transport", "awsiot", "--broker", "mqtts://example.iot:8883",
                       "--cert", str(cert), "--key", str(key), "--state-dir", str(tmp_path / "state"),
                       env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "pip install 'garrison[aws]'" in lines[0], lines
