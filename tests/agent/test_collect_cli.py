"""`garrison-agent collect`: one report on stdout that the engine's validator accepts, in every encoding."""
import json
import socket

import cbor2
import pytest

from garrison.wire import schema
from agent_helpers import run_agent
from garrison.detect.ingest.validate import validate


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("short", [False, True])
def test_collect_prints_a_valid_report(tmp_path, fmt, short):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        args = ["collect", "--state-dir", str(tmp_path), "--format", fmt] + (["--short-names"] if short else [])
        result = run_agent(*args)
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout) if fmt == "json" else cbor2.loads(result.stdout)
    header_key, metrics_key = ("hed", "met") if short else ("header", "metrics")
    assert set(doc) <= {header_key, metrics_key, "cmet" if short else "custom_metrics"}
    assert doc[header_key][("v" if short else "version")] == "1.0"
    # every key is declared in the schema (validate drops undeclared keys), and the values pass
    assert validate(doc) == schema.to_long(doc)
    ports = [p["port"] for p in schema.to_long(doc)["metrics"]["listening_tcp_ports"]["ports"]]
    assert port in ports
    # a fresh state directory: zero deltas
    assert schema.to_long(doc)["metrics"]["network_stats"] == dict.fromkeys(schema.NETWORK_STATS_KEYS, 0)


def test_collect_leaves_the_state_directory_alone(tmp_path):
    """`collect` is a look: it must not advance the running agent's delta baseline or report id."""
    (tmp_path / "last_report_id").write_text("99999999999999")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = run_agent("collect", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["header"]["report_id"] == 99999999999999 + 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    fresh = tmp_path / "fresh"
    assert run_agent("collect", "--state-dir", str(fresh)).returncode == 0
    assert list(fresh.iterdir()) == []                  # created, but nothing written into it


def test_disabled_collectors_leave_their_groups_out(tmp_path):
    result = run_agent("collect", "--state-dir", str(tmp_path), "--collectors", "listening_tcp,network_stats",
                       "--disable-collector", "network_stats")
    assert result.returncode == 0, result.stderr
    # socket_owners (on by default towards Garrison engines) names the owners of what was collected
    assert list(json.loads(result.stdout)["metrics"]) == ["listening_tcp_ports", "socket_owners"]


def test_version_flag():
    result = run_agent("--version")
    assert result.returncode == 0
    from garrison.agent import __version__
    assert result.stdout.decode().strip() == f"garrison-agent {__version__}"
