"""Issue 10 items 1 and 5 against the real engine process and a real Mosquitto: a CBOR
shared-reference bomb is refused cheaply while an honest device is answered; a report the engine
could not store (database write-locked by another process) is not acknowledged, so the broker
delivers it again and nothing is lost; a message that keeps failing is dead-lettered."""
import json
import sqlite3
import sys
import threading
import time
from pathlib import Path

import cbor2
import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detect"))

from garrison.agent import report as wire  # noqa: E402
from garrison.agent.transports.paho_compat import new_client  # noqa: E402
from garrison.detect.ingest.frontdoor import INTERNAL_ERROR, Ingestor  # noqa: E402
from garrison.detect.ingest.mqtt import MqttIngest  # noqa: E402
from garrison.detect.ingest.validate import INVALID_PAYLOAD  # noqa: E402
from garrison.wire import replies  # noqa: E402
from engine_stream import Engine, cli  # noqa: E402
from fixtures import wait_for  # noqa: E402
from ledger import MemoryLedger, PoisonedSink  # noqa: E402
from test_cbor_guard import shared_reference_bomb  # noqa: E402

MiB = 2 ** 20


class Device:
    """A paho client publishing as one thing and collecting the replies it gets."""

    def __init__(self, broker, thing):
        self.thing, self.replies, self.lock = thing, [], threading.Lock()
        self.client = new_client(f"dev-{thing}-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.subscribe(f"$aws/things/{thing}/defender/metrics/+/+", 1)
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.replies.append(replies.parse(msg.topic, msg.payload))

    def publish(self, payload: bytes, fmt: str = "json") -> None:
        self.client.publish(wire.topic(self.thing, fmt), payload, qos=1).wait_for_publish(10)

    def got(self, count: int = 1):
        with self.lock:
            return list(self.replies) if len(self.replies) >= count else None

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def honest_report(report_id: int) -> bytes:
    return wire.encode(wire.build(report_id, network_stats={"bytes_in": 10}, custom_metrics={"n": 1}), "json")


def test_the_bomb_is_refused_and_an_honest_device_answered_under_a_memory_limit(mosquitto, tmp_path):
    """Issue 10 item 1: the real `serve` under a 400 MiB address-space limit (the engine idles
    near 180 MiB of it). Before the fix the 124 KB bomb made validation walk 512 million items:
    the engine grew past 400 MB and answered nobody."""
    engine = Engine(tmp_path, mosquitto.url, memory_limit=400 * MiB).start()
    bomber, honest = Device(mosquitto, "bomber"), Device(mosquitto, "honest")
    try:
        big, small = shared_reference_bomb(64_000, 8_000), shared_reference_bomb(20_000, 2_500)
        assert len(big) > 120_000 and 35_000 < len(small) < 45_000
        bomber.publish(big, "cbor")
        bomber.publish(small, "cbor")
        started = time.monotonic()
        honest.publish(honest_report(int(time.time() * 1000)))
        answer = wait_for(honest.got, timeout=10, what="the honest device's reply")[0]
        assert answer.accepted, answer
        assert time.monotonic() - started < 10
        refused = wait_for(lambda: bomber.got(2), timeout=10, what="the bomber's replies")
        assert [(r.accepted, r.error_code) for r in refused] == [(False, INVALID_PAYLOAD)] * 2
        assert all("tag 28" in r.error_message for r in refused)
        assert engine.alive()
        assert psutil.Process(engine.pid).memory_info().rss < 150 * MiB
    finally:
        bomber.close()
        honest.close()
        engine.stop()


def test_a_write_locked_database_delays_a_report_but_loses_nothing(mosquitto, tmp_path):
    """Issue 10 item 5: while another process holds the write lock past the engine's timeout,
    the report is neither answered InternalError nor acknowledged. The engine is even killed
    while it waits: the broker still holds the report and delivers it to the next engine."""
    engine = Engine(tmp_path, mosquitto.url).start()
    device = Device(mosquitto, "patient")
    locker = sqlite3.connect(engine.db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # a long CLI write
        report_id = int(time.time() * 1000)
        device.publish(honest_report(report_id))
        wait_for(lambda: "store is busy" in engine.log.read_text(), timeout=15, what="the engine to find the store busy")
        assert device.got() is None  # no InternalError: nothing to answer yet
        engine.kill9()
        locker.execute("ROLLBACK")
        engine.start()
        answer = wait_for(device.got, timeout=20, what="the reply after the lock is gone")[0]
        assert answer.accepted and answer.report_id == report_id
        things = {t["thingName"]: t for t in json.loads(cli(engine.db, "things", "list", "--json"))}
        assert things["patient"]["reports"] == 1 and things["patient"]["lastReportId"] == report_id
    finally:
        locker.close()
        device.close()
        engine.stop()


def test_a_lock_released_in_time_lets_the_same_engine_answer(mosquitto, tmp_path):
    """The same without a kill: the waiting batch is tried again and answered once the lock goes."""
    engine = Engine(tmp_path, mosquitto.url).start()
    device = Device(mosquitto, "waits")
    locker = sqlite3.connect(engine.db, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        device.publish(honest_report(int(time.time() * 1000)))
        wait_for(lambda: "store is busy" in engine.log.read_text(), timeout=15, what="the engine to find the store busy")
        locker.execute("ROLLBACK")
        answer = wait_for(device.got, timeout=15, what="the reply")[0]
        assert answer.accepted
        time.sleep(0.5)  # no second reply follows (the broker's copy was acknowledged once)
        assert len(device.got()) == 1
    finally:
        locker.close()
        device.close()
        engine.stop()


def test_a_report_that_keeps_failing_is_dead_lettered_answered_and_acknowledged(mosquitto, tmp_path):
    from garrison.detect.ingest.deadletter import DeadLetters
    sink = PoisonedSink()
    ingest = MqttIngest(mosquitto.url, Ingestor(sink, min_interval_s=0), client_id=f"eng-{time.monotonic_ns()}",
                        dead_letters=str(tmp_path / "dead"), max_attempts=3).start()
    poison, fine = Device(mosquitto, "poison"), Device(mosquitto, "fine")
    try:
        assert ingest.connected.wait(10)
        poison.publish(honest_report(1))
        fine.publish(honest_report(1))
        assert wait_for(fine.got, timeout=10)[0].accepted
        answer = wait_for(poison.got, timeout=15, what="the poison report's answer")[0]
        assert answer.error_code == INTERNAL_ERROR and "set it aside" in answer.error_message
        assert sink.calls == 3
        letters = DeadLetters(str(tmp_path / "dead")).list()
        assert len(letters) == 1 and letters[0]["topic"] == wire.topic("poison", "json")
        assert letters[0]["attempts"] == 3 and "a bug this report trips" in letters[0]["reason"]
        # acknowledged: a new session of the same client gets nothing again
        ingest.stop()
        ingest = MqttIngest(mosquitto.url, Ingestor(sink, min_interval_s=0), client_id=ingest._client._client_id.decode(),
                            dead_letters=str(tmp_path / "dead")).start()
        assert ingest.connected.wait(10)
        fine.publish(honest_report(2))
        wait_for(lambda: fine.got(2), timeout=10)
        assert sink.calls == 3 and len(poison.got()) == 1
    finally:
        ingest.stop()
        poison.close()
        fine.close()


def test_a_message_that_was_in_flight_when_the_engine_died_three_times_is_dead_lettered(mosquitto, tmp_path):
    """The engine process dying while handling a message (OOM kill) is a failure too: the
    in-flight file names it, and the third time it is set aside without being handled again."""
    from garrison.detect.ingest.deadletter import DeadLetters, InFlight, digest
    payload = honest_report(5)
    topic = wire.topic("killer", "json")
    in_flight = tmp_path / "engine.db.inflight"
    in_flight.write_text(json.dumps({digest(topic.encode(), payload): 2}))  # in flight at two deaths
    assert InFlight(str(in_flight)).suspects == {digest(topic.encode(), payload): 3}
    sink = MemoryLedger()
    ingest = MqttIngest(mosquitto.url, Ingestor(sink, min_interval_s=0), client_id=f"eng-{time.monotonic_ns()}",
                        dead_letters=str(tmp_path / "dead"), in_flight=str(in_flight)).start()
    killer, fine = Device(mosquitto, "killer"), Device(mosquitto, "fine2")
    try:
        assert ingest.connected.wait(10)
        killer.publish(payload)
        fine.publish(honest_report(5))
        assert wait_for(fine.got, timeout=10)[0].accepted
        answer = wait_for(killer.got, timeout=10)[0]
        assert answer.error_code == INTERNAL_ERROR
        assert "killer" not in sink.reports  # never handled again
        assert [r["reason"] for r in DeadLetters(str(tmp_path / "dead")).list()] == [
            "the engine process died while handling it"]
        # emptied when fine2's batch ends, just after its reply went out
        wait_for(lambda: in_flight.read_text() == "{}", 10, "the in-flight file to be emptied")
    finally:
        ingest.stop()
        killer.close()
        fine.close()


def test_dead_letters_cli_lists_them(tmp_path):
    from garrison.detect.ingest.deadletter import DeadLetters
    db = tmp_path / "x.db"
    DeadLetters(f"{db}.dead-letters").put(b"$aws/things/a/defender/metrics/cbor", b"\xd8\x1c", "boom", 3)
    listed = json.loads(cli(db, "dead-letters", "--json"))
    assert [(r["topic"], r["attempts"], r["reason"], r["size"]) for r in listed] == [
        ("$aws/things/a/defender/metrics/cbor", 3, "boom", 2)]
    assert (Path(f"{db}.dead-letters").stat().st_mode & 0o777) == 0o700
