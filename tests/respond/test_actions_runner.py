"""The new actions' rules, the runner (real processes), and the agent's control limits."""
import json
import time
from types import SimpleNamespace

import pytest

from garrison.agent.control import AgentControl
from garrison.detect.engine import Engine
from garrison.detect.respond import runner
from garrison.detect.respond.actions import ActionError, parse_action
from garrison.detect.state.store import Store, StoreError
from garrison.wire.control import ControlRequestError, check_request
from garrison.wire.topics import control_topic


def test_action_rules_are_checked_when_loaded():
    assert parse_action("P/b", {"type": "quarantine"}).to_dict() == {"type": "quarantine", "on": "in-alarm"}
    cmd = parse_action("P/b", {"type": "run-command", "command": ["/bin/true", "x"], "timeout_seconds": 3})
    assert cmd.options == {"command": ["/bin/true", "x"], "timeout_seconds": 3}
    for bad, why in (({"type": "run-command", "command": "rm -rf /"}, "list of 1-64 strings"),
                     ({"type": "run-command", "command": ["true"]}, "absolute path"),
                     ({"type": "run-command", "command": ["/bin/true"], "timeout_seconds": 301}, "timeout_seconds"),
                     ({"type": "quarantine", "group": "q"}, "unknown field 'group'"),
                     ({"type": "reconfigure", "request": {"request": "report-every", "seconds": 0,
                                                          "for_seconds": 5}}, "seconds must be"),
                     ({"type": "reconfigure", "request": {"request": "shell", "cmd": "id"}}, "request must be")):
        with pytest.raises(ActionError, match=why):
            parse_action("P/b", bad)


def test_wire_control_requests_are_bounded():
    assert check_request({"request": "report-every", "seconds": 30, "for_seconds": 600, "id": "a1"})["seconds"] == 30
    for bad in ({"request": "report-every", "seconds": 3601, "for_seconds": 1}, {"request": "report-now", "x": 1},
                {"request": "collector", "name": "listening_tcp", "enabled": "yes"}, [], {"request": True}):
        with pytest.raises(ControlRequestError):
            check_request(bad)


@pytest.fixture
def engine(tmp_path):
    store = Store(tmp_path / "db")
    yield Engine(store, ml=None)
    store.close()


def _outcome(engine, seq):
    (entry,) = [e for e in engine.store.list_actions() if e["seq"] == seq]
    return entry


def test_operator_requests_are_logged_pending_then_run_once(engine, tmp_path):
    out = tmp_path / "stdin.json"
    script = tmp_path / "h.sh"
    script.write_text(f"#!/bin/sh\ncat > {out}\necho done\n")
    script.chmod(0o755)
    entry = engine.respond("cam-1", {"type": "run-command", "command": [str(script)]}, by="api")
    assert entry["outcome"] == "pending" and entry["action"]["by"] == "api"
    assert engine.respond("cam-1", {"type": "quarantine"}, by="api", dry_run=True)["outcome"] == "dry-run"
    with pytest.raises(StoreError):
        engine.respond("cam/1", {"type": "quarantine"}, by="api")
    work = runner.ActionRunner(engine.store)   # no broker control here
    broker = engine.respond("cam-1", {"type": "disable"}, by="api")
    assert work.run_pending() == 2 and work.run_pending() == 0
    assert _outcome(engine, entry["seq"])["outcome"] == "done"
    assert json.loads(out.read_text()) == {"thingName": "cam-1"}
    failed = _outcome(engine, broker["seq"])
    assert failed["outcome"] == "failed" and "no broker control" in failed["detail"]


def test_a_command_that_hangs_or_floods_is_bounded(tmp_path):
    started = time.monotonic()
    outcome, detail = runner.run_command(["/bin/sh", "-c", "sleep 30"], 0.5, {})
    assert outcome == "failed" and "killed after 0.5 s" in detail and time.monotonic() - started < 5
    outcome, detail = runner.run_command(["/bin/sh", "-c", "yes | head -c 10000000; exit 0"], 10, {})
    assert outcome == "done" and len(detail) < 3 * runner.MAX_OUTPUT_BYTES   # 10 MB read, 4 KiB kept
    assert runner.run_command([str(tmp_path / "missing")], 1, {})[0] == "failed"


def _control(**limits):
    conf = SimpleNamespace(control_min_interval=10.0, control_max_duration=60.0, control_collectors=["network_stats"])
    for key, value in limits.items():
        setattr(conf, key, value)
    clock = [1000.0]
    collectors = SimpleNamespace(collectors={"network_stats": object(), "listening_tcp": object()})
    return AgentControl(conf, collectors, clock=lambda: clock[0]), clock, collectors


def test_the_agent_applies_requests_only_within_its_limits():
    control, clock, collectors = _control()
    control.on_message(b'{"request": "report-every", "seconds": 1, "for_seconds": 9999}')
    assert control.interval(300) == 10.0 and control.remaining() == 60.0 and control.report_now_due()
    clock[0] += 61
    assert control.interval(300) is None
    control.on_message(b'{"request": "report-now"}')
    assert control.report_now_due() and not control.report_now_due()
    control.on_message(b'{"request": "report-now"}')          # within control_min_interval: refused
    assert not control.report_now_due()
    control.on_message(b'{"request": "collector", "name": "listening_tcp", "enabled": false}')   # not allowed
    control.on_message(b'{"request": "collector", "name": "network_stats", "enabled": false}')
    assert set(collectors.collectors) == {"listening_tcp"}
    control.on_message(b'{"request": "collector", "name": "network_stats", "enabled": true}')
    assert set(collectors.collectors) == {"listening_tcp", "network_stats"}
    for junk in (b"\xff", b"[]", b"x" * 5000, b'{"request": "run", "cmd": "id"}'):
        control.on_message(junk)                                # refused and logged, never raised
    control.on_message(b'{"request": "report-every", "seconds": 20, "for_seconds": 30}')
    control.on_message(b'{"request": "report-default"}')
    assert control.interval(300) is None


def test_actions_that_need_the_broker_wait_while_it_is_away(engine):
    up = [False]
    sent = []
    work = runner.ActionRunner(engine.store, publish=lambda topic, payload, qos: sent.append(topic),
                               connected=lambda: up[0])
    entry = engine.respond("cam-2", {"type": "reconfigure", "request": {"request": "report-now"}}, by="api")
    assert work.run_pending() == 0 and _outcome(engine, entry["seq"])["outcome"] == "pending"
    up[0] = True
    assert work.run_pending() == 1 and sent == [control_topic("cam-2")]
    assert _outcome(engine, entry["seq"])["outcome"] == "sent"
