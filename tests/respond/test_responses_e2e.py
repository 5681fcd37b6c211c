"""Responses that bite, end to end: the real `garrison-detect serve --broker-control` on a real
Mosquitto with the dynamic security plugin, and the real agent (its Daemon, reporting a custom
metric the test sets) over mutual TLS.

- a device tripping a profile is quarantined within 5 s of the report, keeps reporting, cannot
  subscribe to or publish anything else, and is released to full rights when the alarm clears;
  the run-command action got the event and its failure is in the actions log;
- a disabled device is disconnected, gets nothing done when it reconnects, and works again once
  enabled (`garrison-detect respond disable|enable` through serve);
- an alarm makes the agent report every second until the alarm clears, then at its interval.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from garrison.agent import config as agent_config
from garrison.agent.daemon import Daemon
from garrison.detect.respond import brokercontrol
from garrison.detect.state.store import Store
from garrison.wire.topics import control_topic, report_topic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynsec_fleet import DynsecFleet  # noqa: E402
from fixtures import wait_for  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None or brokercontrol.plugin_path() is None,
                                reason="mosquitto with its dynamic security plugin is not installed")

CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
PROFILE = {"securityProfileName": "Fleet", "behaviors": [{"name": "alarm-level", "metric": "alarm_level", "criteria": {
    "comparisonOperator": "less-than", "value": {"number": 1}}}]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = DynsecFleet(tmp_path_factory.mktemp("e2e"), things=("pump-1", "pump-2", "pump-3"))
    yield fleet
    fleet.stop()


class Serve:
    """`garrison-detect serve --broker-control` as the engine's identity, with `actions` as its rules."""

    def __init__(self, fleet: DynsecFleet, workdir: Path, actions: str):
        workdir.mkdir()
        (workdir / "fleet.json").write_text(json.dumps(PROFILE))
        (workdir / "engine.toml").write_text(f'min_report_interval = 0.5\n[actions]\n{actions}\n'
                                             f'[[profiles]]\nfile = "fleet.json"\nattach = "all"\n')
        self.db, self.log = workdir / "engine.db", workdir / "engine.log"
        cert, key = fleet.engine_files
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "garrison.detect.cli", "serve", "--broker", fleet.url, "--db", str(self.db),
             "--config", str(workdir / "engine.toml"), "--ca", str(fleet.ca.cert_path), "--cert", str(cert),
             "--key", str(key), "--broker-control", "--api-bind", "127.0.0.1:0"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=CLI_ENV)
        wait_for(lambda: "serving:" in self.log.read_text(), 30, "serve to start")
        self.store = Store(self.db)

    def actions(self, kind: str, outcome: str = None):
        return [a for a in self.store.list_actions() if a["action"]["type"] == kind
                and (outcome is None or a["outcome"] == outcome)]

    def last_received_ms(self, thing: str) -> int:
        last = self.store.last_report(thing)
        return 0 if last is None or last[1] is None else last[1]

    def respond(self, *argv) -> dict:
        out = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", str(self.db), "respond", *argv,
                              "--wait", "15", "--json"], capture_output=True, text=True, env=CLI_ENV, timeout=60)
        return json.loads(out.stdout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.store.close()


class Agent:
    """The real agent (Daemon.run_forever in a thread) reporting `level` as the custom metric alarm_level."""

    def __init__(self, fleet: DynsecFleet, thing: str, state_dir: Path, interval: float, level: int = 0):
        self.level = level
        cert, key = fleet.ca.thing_paths(thing)
        conf = agent_config.load(environ={}, flags=dict(
            thing=thing, broker=fleet.url, ca=str(fleet.ca.cert_path), cert=str(cert), key=str(key),
            interval=interval, jitter=0.0, state_dir=str(state_dir), collectors=["listening_tcp"],
            publish_timeout=2.0, reply_timeout=2.0, control_min_interval=1.0, socket_events="off"))
        self.daemon = Daemon(conf, custom_metrics={"alarm_level": lambda: self.level})
        self.report_times = []
        cycle = self.daemon.cycle

        def timed_cycle():
            self.report_times.append(time.monotonic())
            return cycle()
        self.daemon.cycle = timed_cycle
        self.thread = threading.Thread(target=self.daemon.run_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.daemon.stop()
        self.thread.join(30)


def _denied(fleet: DynsecFleet, thing: str, topic: str) -> bool:
    return f"Denied PUBLISH from {thing} (d0, q1, r0, m" in fleet.log.read_text() and topic in fleet.log.read_text()


def test_a_device_tripping_a_profile_is_quarantined_within_5_s_then_released(fleet, tmp_path):
    handler = tmp_path / "handler.sh"
    received = tmp_path / "event.json"
    handler.write_text(f"#!/bin/sh\ncat > {received}\necho ticket refused >&2\nexit 3\n")
    handler.chmod(0o755)
    serve = Serve(fleet, tmp_path / "engine", f'"Fleet/alarm-level" = [{{type = "quarantine"}}, '
                  f'{{type = "run-command", command = ["{handler}", "--severity", "high"], timeout_seconds = 5}}, '
                  f'{{type = "release", on = "alarm-cleared"}}]')
    agent = Agent(fleet, "pump-1", tmp_path / "agent", interval=1.0)
    try:
        wait_for(lambda: serve.last_received_ms("pump-1"), 30, "the first report")
        agent.level = 5
        (done,) = wait_for(lambda: serve.actions("quarantine", "done"), 30, "the quarantine")
        done_ms = int(time.time() * 1000)
        (event,) = [e for e in serve.store.list_events(thing="pump-1") if e["event_type"] == "in-alarm"]
        assert done_ms - event["time_ms"] <= 5000, f"quarantined {done_ms - event['time_ms']} ms after the report"
        # the agent was disconnected and keeps reporting under the quarantine
        after = serve.last_received_ms("pump-1")
        wait_for(lambda: serve.last_received_ms("pump-1") > after + 1500, 30, "reports after the quarantine")
        # run-command got the event on stdin, and its failure is in the actions log
        (ran,) = wait_for(lambda: serve.actions("run-command", "failed"), 30, "the run-command outcome")
        got = json.loads(received.read_text())
        assert got["thingName"] == "pump-1" and got["violationEventType"] == "in-alarm"
        assert got["behavior"]["name"] == "alarm-level"
        assert "exited with status 3" in ran["detail"] and "ticket refused" in ran["detail"]
        agent.stop()

        # with the device's own certificate: nothing but its reports and replies
        probe = fleet.device("pump-1").wait_connected()
        assert probe.subscribe(control_topic("pump-1"), "#", "$aws/things/pump-2/#") == [0x80] * 3
        for forbidden in (report_topic("pump-2", "json"), "pump-1/anything"):
            probe.publish(forbidden, b"forged")
            wait_for(lambda: _denied(fleet, "pump-1", forbidden), 10, f"the broker to deny {forbidden}")
        assert serve.store.last_report("pump-2") is None
        probe.close()

        agent = Agent(fleet, "pump-1", tmp_path / "agent", interval=1.0, level=0)
        wait_for(lambda: serve.actions("release", "done"), 30, "the release on alarm-cleared")
        agent.stop()
        probe = fleet.device("pump-1").wait_connected()
        assert probe.subscribe(control_topic("pump-1")) == [1]
        probe.close()
    finally:
        agent.stop()
        serve.stop()


def test_a_disabled_device_is_disconnected_and_can_do_nothing_until_enabled(fleet, tmp_path):
    serve = Serve(fleet, tmp_path / "engine", "")
    agent = Agent(fleet, "pump-2", tmp_path / "agent", interval=1.0)
    try:
        wait_for(lambda: serve.last_received_ms("pump-2"), 30, "the first report")
        dropped = threading.Event()
        transport = agent.daemon.transport
        watch = threading.Thread(target=lambda: wait_for(lambda: not transport.connected and dropped.set() is None,
                                                         30, "the disconnect"), daemon=True)
        watch.start()
        result = serve.respond("disable", "pump-2")
        assert result["outcome"] == "done" and result["action"]["by"].startswith("cli:"), result
        watch.join(30)
        assert "Client pump-2 been disconnected by administrative action" in fleet.log.read_text()
        assert dropped.is_set(), "the disabled device was not disconnected"
        # Mosquitto 2.0 lets a certificate identity reconnect; every publish it makes is denied
        wait_for(lambda: _denied(fleet, "pump-2", report_topic("pump-2", "json")), 30, "a denied report")
        # the agent keeps an unanswered report in its spool: the engine never got it
        (held,) = wait_for(lambda: agent.daemon.spool.entries(), 10, "the denied report in the spool")[:1]
        assert serve.store.last_report("pump-2")[0] < held.report_id
        assert serve.respond("enable", "pump-2")["outcome"] == "done"
        wait_for(lambda: serve.store.last_report("pump-2")[0] >= held.report_id, 30,
                 "the held report to arrive after enable")
    finally:
        agent.stop()
        serve.stop()


def test_an_alarm_makes_the_agent_report_every_second_until_it_clears(fleet, tmp_path):
    serve = Serve(fleet, tmp_path / "engine", '"Fleet/alarm-level" = ['
                  '{type = "reconfigure", request = {request = "report-every", seconds = 1, for_seconds = 600}}, '
                  '{type = "reconfigure", on = "alarm-cleared", request = {request = "report-default"}}]')
    agent = Agent(fleet, "pump-3", tmp_path / "agent", interval=30.0, level=5)   # its first report alarms
    try:
        wait_for(lambda: serve.actions("reconfigure", "sent"), 30, "the reconfigure request")
        wait_for(lambda: len(agent.report_times) >= 4, 20, "reports every second")
        gaps = [b - a for a, b in zip(agent.report_times[1:], agent.report_times[2:])]
        assert all(0.8 <= gap <= 2.5 for gap in gaps), gaps
        agent.level = 0
        wait_for(lambda: len(serve.actions("reconfigure", "sent")) == 2, 30, "the alarm-cleared request")
        wait_for(lambda: agent.daemon.control.interval(30.0) is None, 10, "the agent back on its interval")
        count = len(agent.report_times)
        time.sleep(4)
        assert len(agent.report_times) <= count + 1, "still reporting every second after the alarm cleared"
    finally:
        agent.stop()
        serve.stop()
