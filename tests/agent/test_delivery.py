"""A report leaves the agent's spool only with an answer that settles it (issue 10, item 5).

The real agent process against a real Mosquitto and a real MQTT client that answers like the
engine, but as scripted: `InternalError` (the engine could not record it: "send it again
later"), a rejection resending cannot fix, or no answer at all.
"""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from agent_helpers import AGENT, paho_client, run_agent
from fixtures import wait_for


class ScriptedEngine:
    """Answers each report with `script(thing, report_id, nth delivery of that id)`: a
    (status, ErrorCode or None, with_report_id) tuple, or None for no answer."""

    def __init__(self, broker, script):
        self.script = script
        self.received = []            # (thing, report id) in arrival order
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho_client(f"scripted-{os.getpid()}-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *a: c.subscribe("$aws/things/+/defender/metrics/json", 1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg):
        thing = msg.topic.split("/")[2]
        rid = json.loads(msg.payload)["header"]["report_id"]
        with self.lock:
            self.received.append((thing, rid))
            nth = self.received.count((thing, rid))
        answer = self.script(thing, rid, nth)
        if answer is None:
            return
        status, code, with_id = answer
        body = {"thingName": thing, "status": status, "timestamp": int(time.time() * 1000)}
        if with_id:
            body["reportId"] = rid
        if code:
            body["statusDetails"] = {"ErrorCode": code, "ErrorMessage": f"scripted {code}"}
        client.publish(f"{msg.topic}/{'accepted' if status == 'ACCEPTED' else 'rejected'}",
                       json.dumps(body).encode(), qos=1)

    def ids(self, thing):
        with self.lock:
            return [rid for t, rid in self.received if t == thing]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


ACCEPTED = ("ACCEPTED", None, True)


def _spawn(args, log):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    return subprocess.Popen(AGENT + args, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)


def test_internal_error_keeps_the_report_and_it_is_resent_in_order_until_accepted(tmp_path, shared_mosquitto):
    first = []

    def script(thing, rid, nth):
        if not first:
            first.append(rid)
        if rid == first[0] and nth <= 2:       # the engine fails to record the first report twice
            return ("REJECTED", "InternalError", True)
        return ACCEPTED

    engine = ScriptedEngine(shared_mosquitto, script)
    log = tmp_path / "agent.log"
    proc = _spawn(["run", "--thing", "flaky", "--broker", shared_mosquitto.url, "--interval", "1",
                   "--jitter", "0", "--state-dir", str(tmp_path / "state"), "--reply-timeout", "10"], log)
    try:
        wait_for(lambda: len(engine.ids("flaky")) >= 6, 60, "the resends and newer reports")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        engine.close()
    ids = engine.ids("flaky")
    head = first[0]
    # sent three times (two InternalError, then accepted), and nothing newer went before it
    assert ids[:3] == [head] * 3, ids
    assert ids[3:] == sorted(set(ids[3:])) and min(ids[3:]) > head, ids
    text = log.read_text()
    assert text.count(f"report {head} rejected: InternalError") == 2, text
    assert "kept in the spool and sent again" in text
    assert f"report {head} accepted" in text
    assert not (tmp_path / "state" / "spool" / f"{head:020d}.json").exists()


@pytest.mark.parametrize("code,with_id", [("InvalidPayload", True), ("PayloadTooLarge", False)])
def test_a_rejection_resending_cannot_fix_drops_the_report_and_says_so(tmp_path, shared_mosquitto, code, with_id):
    thing = f"refused-{code}"
    engine = ScriptedEngine(shared_mosquitto, lambda t, rid, nth: ("REJECTED", code, with_id))
    try:
        result = run_agent("run", "--once", "--thing", thing, "--broker", shared_mosquitto.url,
                           "--state-dir", str(tmp_path), "--reply-timeout", "20")
        (rid,) = engine.ids(thing)                        # sent once, never again
    finally:
        engine.close()
    assert result.returncode == 1, result.stderr.decode()
    stderr = result.stderr.decode()
    assert f"report {rid} rejected: {code}" in stderr and "dropped" in stderr, stderr
    assert not list((tmp_path / "spool").glob("*.json"))


def test_run_once_keeps_a_report_answered_internal_error_and_the_next_run_resends_it(tmp_path, shared_mosquitto):
    first = []

    def script(thing, rid, nth):
        first.append(first[0] if first else rid)
        return ("REJECTED", "InternalError", True) if rid == first[0] and nth == 1 else ACCEPTED

    engine = ScriptedEngine(shared_mosquitto, script)
    args = ["run", "--once", "--thing", "once-flaky", "--broker", shared_mosquitto.url, "--state-dir",
            str(tmp_path), "--reply-timeout", "20"]
    try:
        failed = run_agent(*args)
        assert failed.returncode == 3, failed.stderr.decode()     # not settled: kept
        (kept,) = (tmp_path / "spool").glob("*.json")
        done = run_agent(*args)
        assert done.returncode == 0, done.stderr.decode()
        ids = engine.ids("once-flaky")
    finally:
        engine.close()
    first = int(kept.stem)
    assert ids[:2] == [first, first] and len(ids) == 3 and ids[2] > first, ids   # resent first, in order
    assert not list((tmp_path / "spool").glob("*.json"))


def test_no_reply_means_the_report_is_resent(tmp_path, shared_mosquitto):
    engine = ScriptedEngine(shared_mosquitto, lambda t, rid, nth: None if nth == 1 else ACCEPTED)
    log = tmp_path / "agent.log"
    proc = _spawn(["run", "--thing", "unanswered", "--broker", shared_mosquitto.url, "--interval", "300",
                   "--state-dir", str(tmp_path / "state"), "--reply-timeout", "1"], log)
    try:
        wait_for(lambda: len(engine.ids("unanswered")) >= 2, 30, "the resend")
        rid = engine.ids("unanswered")[0]
        wait_for(lambda: f"report {rid} accepted" in log.read_text(), 20, "the acceptance")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        engine.close()
    assert engine.ids("unanswered") == [rid, rid]
    assert "no reply within 1 s" in log.read_text()
    assert not list((tmp_path / "state" / "spool").glob("*.json"))
