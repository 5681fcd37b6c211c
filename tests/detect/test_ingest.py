"""garrison.detect.ingest.frontdoor: the Ingestor's replies for every path, and MqttIngest on a real Mosquitto."""
import json
import threading
import time

import cbor2
import pytest

from garrison.wire import replies
from garrison.agent import report
from garrison.detect.ingest.frontdoor import INTERNAL_ERROR, INVALID_THING_NAME, PAYLOAD_TOO_LARGE, STALE_REPORT_ID, THROTTLED, UNREGISTERED_THING, Ingestor, parse_topic
from garrison.detect.ingest.mqtt import MqttIngest
from garrison.agent.transports.paho_compat import parse_broker_url
from fixtures import wait_for
from ledger import MemoryLedger
from garrison.detect.ingest.validate import INVALID_PAYLOAD
from garrison.agent.transports.paho_compat import new_client

FIXTURES = [  # (file, topic format, report id)
    ("aws-docs-example-long.json", "json", 1530304554),
    ("aws-docs-example-short.json", "json", 1530305228),
    ("aws-sample-agent-2.0.0-long.json", "json", 1795390977),
    ("aws-sample-agent-2.0.0-long-second.json", "json", 1795390978),
    ("aws-sample-agent-2.0.0-long.cbor", "cbor", 1795390977),
    ("aws-sample-agent-2.0.0-short.json", "json", 1795390978),
    ("aws-sample-agent-2.0.0-short.cbor", "cbor", 1795390978),
]
T0 = 1_800_000_000_000


def body_of(reply, fmt):
    return cbor2.loads(reply.payload) if fmt == "cbor" else json.loads(reply.payload)


def payload(report_id, fmt="json", short=False):
    built = report.build(report_id, network_stats={"bytes_in": 10}, custom_metrics={"n": 1})
    return report.encode(built, fmt, short_names=short)


@pytest.fixture
def ledger():
    return MemoryLedger()


@pytest.fixture
def ingestor(ledger):
    return Ingestor(ledger, min_interval_s=300, grace_s=30)


@pytest.mark.parametrize("name,fmt,rid", FIXTURES)
def test_aws_fixtures_are_accepted_with_aws_shaped_replies(aws_reports, ingestor, ledger, name, fmt, rid):
    topic = f"$aws/things/sensor-1/defender/metrics/{fmt}"
    reply = ingestor.handle(topic, (aws_reports / name).read_bytes(), T0)
    assert reply.accepted and reply.thing == "sensor-1" and reply.report_id == rid
    assert reply.topic == topic + "/accepted" and reply.error_code is None
    body = body_of(reply, fmt)
    assert body == {"thingName": "sensor-1", "reportId": rid, "status": "ACCEPTED", "timestamp": T0}
    assert list(body) == ["thingName", "reportId", "status", "timestamp"]
    assert ledger.last["sensor-1"] == (rid, T0)
    assert ledger.reports["sensor-1"][0]["header"]["report_id"] == rid
    parsed = replies.parse(reply.topic, reply.payload)  # what our agent makes of it
    assert parsed.accepted and parsed.report_id == rid and parsed.thing == "sensor-1"


def test_bare_custom_metric_fixture_is_rejected(aws_reports, ingestor, ledger):
    topic = "$aws/things/sensor-1/defender/metrics/json"
    reply = ingestor.handle(topic, (aws_reports / "aws-docs-rejected-bare-custom-metric.json").read_bytes(), T0)
    assert not reply.accepted and reply.topic == topic + "/rejected"
    body = json.loads(reply.payload)
    assert list(body) == ["thingName", "reportId", "status", "statusDetails", "timestamp"]
    assert body["thingName"] == "sensor-1" and body["reportId"] == 12334567
    assert body["status"] == "REJECTED" and body["timestamp"] == T0
    assert body["statusDetails"]["ErrorCode"] == "InvalidPayload"
    assert "my_custom_metric" in body["statusDetails"]["ErrorMessage"]
    assert ledger.reports == {}
    parsed = replies.parse(reply.topic, reply.payload)
    assert not parsed.accepted and parsed.error_code == "InvalidPayload" and parsed.report_id == 12334567


@pytest.mark.parametrize("fmt", ["json", "cbor"])
@pytest.mark.parametrize("short", [False, True])
def test_our_reports_in_all_four_encodings(ingestor, ledger, fmt, short):
    reply = ingestor.handle(f"$aws/things/t/defender/metrics/{fmt}", payload(42, fmt, short), T0)
    assert reply.accepted and body_of(reply, fmt)["reportId"] == 42
    assert ledger.reports["t"][0]["metrics"]["network_stats"]["bytes_in"] == 10


def test_rejected_cbor_reply_is_cbor(ingestor):
    reply = ingestor.handle("$aws/things/t/defender/metrics/cbor", b"\xff\x00garbage", T0)
    body = cbor2.loads(reply.payload)
    assert body["status"] == "REJECTED" and body["statusDetails"]["ErrorCode"] == INVALID_PAYLOAD
    assert "reportId" not in body
    assert reply.topic == "$aws/things/t/defender/metrics/cbor/rejected"


@pytest.mark.parametrize("topic,expected", [
    ("$aws/things/dev-1/defender/metrics/json", ("dev-1", "json")),
    ("$aws/things/a:b_c-D9/defender/metrics/cbor", ("a:b_c-D9", "cbor")),
    ("$aws/things/dev-1/defender/metrics/xml", None),
    ("$aws/things/dev-1/defender/metrics/json/accepted", None),
    ("$aws/things//defender/metrics/json", None),
    ("$aws/things/a/b/defender/metrics/json", None),
    ("aws/things/dev-1/defender/metrics/json", None),
    ("$aws/things/dev-1/shadow/update", None),
    ("", None),
    (None, None),
])
def test_parse_topic(topic, expected):
    assert parse_topic(topic) == expected


@pytest.mark.parametrize("topic", ["garrison/alerts/x", "$aws/things/dev-1/defender/metrics/json/rejected",
                                   "$aws/things/a+b/defender/metrics/json", "$aws/things/a#/defender/metrics/json",
                                   "$aws/things/a\x00b/defender/metrics/json",
                                   "$aws/things/a\nb/defender/metrics/json",
                                   "$aws/things/" + "x" * 2000 + "/defender/metrics/json"])
def test_no_reply_possible_means_dropped(ingestor, ledger, topic):
    assert ingestor.handle(topic, payload(1), T0) is None
    assert ingestor.stats["dropped"] == 1 and ledger.reports == {}


@pytest.mark.parametrize("thing", ["has space", "dev.1", "x" * 129, "überwachung", "a%b"])
def test_invalid_thing_name_with_a_safe_reply_topic_is_rejected(ingestor, ledger, thing):
    reply = ingestor.handle(f"$aws/things/{thing}/defender/metrics/json", payload(1), T0)
    assert not reply.accepted and reply.error_code == INVALID_THING_NAME
    assert reply.topic == f"$aws/things/{thing}/defender/metrics/json/rejected"
    assert json.loads(reply.payload)["thingName"] == thing
    assert ledger.reports == {}


def test_thing_name_of_128_bytes_is_fine(ingestor):
    assert ingestor.handle("$aws/things/" + "x" * 128 + "/defender/metrics/json", payload(1), T0).accepted


def test_oversized_payload(ledger):
    ingestor = Ingestor(ledger, max_payload=1000)
    big = report.encode(report.build(3, custom_metrics={"s": ["y" * 50] * 30}), "json")
    assert len(big) > 1000
    reply = ingestor.handle("$aws/things/t/defender/metrics/json", big, T0)
    assert reply.error_code == PAYLOAD_TOO_LARGE and "over the limit of 1000" in reply.error_message
    assert ingestor.handle("$aws/things/t/defender/metrics/json", payload(3), T0).accepted


def test_default_limit_is_awss_128_kb(ingestor):
    reply = ingestor.handle("$aws/things/t/defender/metrics/json", b" " * (128 * 1024 + 1), T0)
    assert reply.error_code == PAYLOAD_TOO_LARGE


@pytest.mark.parametrize("raw,fmt", [(b"{", "json"), (b"", "json"), (b"\xff\xfe\xfd", "json"),
                                     (b"[1,2", "json"), (b"\x9f", "cbor"), (b"", "cbor")])
def test_malformed_payloads(ingestor, raw, fmt):
    reply = ingestor.handle(f"$aws/things/t/defender/metrics/{fmt}", raw, T0)
    assert reply.error_code == INVALID_PAYLOAD and reply.report_id is None
    assert body_of(reply, fmt)["statusDetails"]["ErrorMessage"].startswith("malformed")


def test_invalid_report_keeps_the_parsed_report_id(ingestor):
    doc = {"header": {"report_id": 77, "version": "9.9"}, "metrics": {}}
    reply = ingestor.handle("$aws/things/t/defender/metrics/json", json.dumps(doc).encode(), T0)
    assert reply.error_code == INVALID_PAYLOAD and reply.report_id == 77
    assert json.loads(reply.payload)["reportId"] == 77


def test_throttling_and_grace(ingestor, ledger):
    topic = "$aws/things/t/defender/metrics/json"
    assert ingestor.handle(topic, payload(1), T0).accepted
    early = ingestor.handle(topic, payload(2), T0 + 269_999)  # 300 s - 30 s grace, minus 1 ms
    assert early.error_code == THROTTLED and early.report_id == 2
    assert json.loads(early.payload)["reportId"] == 2
    assert ingestor.handle(topic, payload(2), T0 + 270_000).accepted  # within the grace: fine
    assert ledger.last["t"] == (2, T0 + 270_000)
    # the interval restarts from the last accepted report, not from the throttled one
    assert ingestor.handle(topic, payload(3), T0 + 270_000 + 100_000).error_code == THROTTLED
    assert ingestor.handle(topic, payload(3), T0 + 270_000 + 300_000).accepted
    assert [r["header"]["report_id"] for r in ledger.reports["t"]] == [1, 2, 3]


def test_default_grace_is_a_tenth_of_the_interval(ledger):
    ingestor = Ingestor(ledger, min_interval_s=5)
    topic = "$aws/things/t/defender/metrics/json"
    assert ingestor.handle(topic, payload(1), T0).accepted
    assert ingestor.handle(topic, payload(2), T0 + 4_499).error_code == THROTTLED
    assert ingestor.handle(topic, payload(2), T0 + 4_500).accepted


def test_throttling_is_per_thing(ingestor):
    for thing in ("a", "b", "c"):
        assert ingestor.handle(f"$aws/things/{thing}/defender/metrics/json", payload(1), T0).accepted


def test_clock_stepping_back_does_not_throttle(ingestor):
    topic = "$aws/things/t/defender/metrics/json"
    assert ingestor.handle(topic, payload(1), T0).accepted
    assert ingestor.handle(topic, payload(2), T0 - 3_600_000).accepted


def test_a_spooled_backlog_is_dated_by_its_ids_and_not_throttled(ingestor, ledger):
    topic = "$aws/things/t/defender/metrics/json"
    now = T0 + 3_600_000
    assert ingestor.handle(topic, payload(T0), T0).accepted
    # the broker was away for an hour: the agent sends what it spooled every 300 s, in order
    backlog = [T0 + k * 300_000 for k in range(1, 10)]
    assert all(ingestor.handle(topic, payload(rid), now).accepted for rid in backlog)
    assert ledger.last["t"] == (backlog[-1], backlog[-1])
    # ...but a device cannot use old ids to send faster than one report per interval
    squeezed = backlog[-1] + 60_000
    assert ingestor.handle(topic, payload(squeezed), now).error_code == THROTTLED
    # and a live report right after the backlog is dated by its arrival, as usual
    assert ingestor.handle(topic, payload(now), now).accepted
    assert ledger.last["t"] == (now, now)


def test_duplicate_report_is_accepted_again_without_reprocessing(ingestor, ledger):
    topic = "$aws/things/t/defender/metrics/json"
    first = ingestor.handle(topic, payload(10), T0)
    again = ingestor.handle(topic, payload(10), T0 + 1000)  # QoS 1 redelivery: inside the interval
    assert first.accepted and again.accepted and again.report_id == 10
    assert json.loads(again.payload)["timestamp"] == T0 + 1000
    assert len(ledger.reports["t"]) == 1 and ledger.last["t"] == (10, T0)
    assert ingestor.stats["duplicate"] == 1


def test_stale_report_id(ingestor, ledger):
    topic = "$aws/things/t/defender/metrics/json"
    assert ingestor.handle(topic, payload(10), T0).accepted
    stale = ingestor.handle(topic, payload(9), T0 + 600_000)
    assert stale.error_code == STALE_REPORT_ID and stale.report_id == 9
    assert "(10)" in stale.error_message and len(ledger.reports["t"]) == 1


def test_strict_mode_refuses_unregistered_things():
    ledger = MemoryLedger(registered={"known"})
    ingestor = Ingestor(ledger, strict=True)
    reply = ingestor.handle("$aws/things/stranger/defender/metrics/json", payload(1), T0)
    # refused before the payload is decoded (cheap checks first), so the reply has no report id
    assert reply.error_code == UNREGISTERED_THING and reply.report_id is None
    assert ingestor.handle("$aws/things/known/defender/metrics/json", payload(1), T0).accepted
    assert list(ledger.reports) == ["known"]
    # not strict: anyone may report
    assert Ingestor(MemoryLedger()).handle("$aws/things/stranger/defender/metrics/json", payload(1), T0).accepted


class BrokenSink(MemoryLedger):
    """A sink that fails on some things, like an engine whose disk is full."""

    def __init__(self, fail_on=("bad",), fail_lookup=()):
        super().__init__()
        self.fail_on, self.fail_lookup = fail_on, fail_lookup

    def accept(self, thing, report_long, received_ms):
        if thing in self.fail_on:
            raise OSError("database is locked")
        super().accept(thing, report_long, received_ms)

    def last_report(self, thing):
        if thing in self.fail_lookup:
            raise RuntimeError("lookup failed")
        return super().last_report(thing)


def test_sink_failure_is_an_internal_error_and_the_ingestor_keeps_serving(caplog):
    sink = BrokenSink(fail_lookup=("worse",))
    ingestor = Ingestor(sink)
    bad = ingestor.handle("$aws/things/bad/defender/metrics/json", payload(1), T0)
    assert bad.error_code == INTERNAL_ERROR and bad.report_id == 1
    assert "database is locked" in caplog.text  # logged with its traceback
    worse = ingestor.handle("$aws/things/worse/defender/metrics/cbor", payload(1, "cbor"), T0)
    assert worse.error_code == INTERNAL_ERROR and cbor2.loads(worse.payload)["status"] == "REJECTED"
    assert ingestor.handle("$aws/things/good/defender/metrics/json", payload(1), T0).accepted
    # the failed report was not recorded, so the device's resend is processed, not a "duplicate"
    sink.fail_on = ()
    assert ingestor.handle("$aws/things/bad/defender/metrics/json", payload(1), T0 + 1).accepted
    assert len(sink.reports["bad"]) == 1


def test_non_bytes_payload_is_rejected_not_raised(ingestor):
    assert ingestor.handle("$aws/things/t/defender/metrics/json", "a str", T0).error_code == INVALID_PAYLOAD


def test_rejection_logs_are_rate_limited(ingestor, caplog):
    caplog.set_level("INFO", logger="garrison.ingest")
    for _ in range(50):
        ingestor.handle("$aws/things/t/defender/metrics/json", b"{", T0)
    lines = [r for r in caplog.records if "rejected a report" in r.getMessage()]
    assert len(lines) == 1 and ingestor.stats["rejected:InvalidPayload"] == 50


def test_parse_broker_url():
    assert parse_broker_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False, None, None)
    assert parse_broker_url("mqtts://broker.example") == ("broker.example", 8883, True, None, None)
    assert parse_broker_url("mqtt://u%40x:p%3Aw@h") == ("h", 1883, False, "u@x", "p:w")
    for bad in ("http://h", "h:1883", "mqtt://:1883", "mqtt://h:notaport"):
        with pytest.raises(ValueError):
            parse_broker_url(bad)


# ------------------------------------------------------------------ live, on a real Mosquitto

class Device:
    """A paho client that publishes reports and collects the replies it gets."""

    def __init__(self, broker, thing, client_id=None):
        self.replies, self.got = [], threading.Condition()
        self.client = new_client(client_id or f"dev-{thing}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for fmt in ("json", "cbor"):
            self.client.subscribe(f"$aws/things/{thing}/defender/metrics/{fmt}/+", 1)
        self.thing = thing
        self.publish("garrison/test/sync", b"")  # subscriptions are in place once this is acked

    def _on_message(self, client, userdata, msg):
        with self.got:
            self.replies.append(replies.parse(msg.topic, msg.payload))
            self.got.notify_all()

    def publish(self, topic, data):
        self.client.publish(topic, data, qos=1).wait_for_publish(10)

    def wait_for(self, count, timeout=30):
        with self.got:
            assert self.got.wait_for(lambda: len(self.replies) >= count, timeout), self.replies
        return self.replies

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_mqtt_ingest_replies_on_a_real_broker(mosquitto):
    ledger = MemoryLedger()
    engine = MqttIngest(mosquitto.url, Ingestor(ledger, min_interval_s=300), client_id="engine-live").start()
    try:
        assert engine.connected.wait(10)
        device = Device(mosquitto, "live-1")
        device.publish("$aws/things/live-1/defender/metrics/json", payload(100))
        device.publish("$aws/things/live-1/defender/metrics/cbor", payload(101, "cbor", short=True))
        device.publish("$aws/things/live-1/defender/metrics/json", b"not json")
        got = device.wait_for(3)
        assert [(r.accepted, r.report_id, r.error_code) for r in got] == [
            (True, 100, None), (False, 101, THROTTLED), (False, None, INVALID_PAYLOAD)]
        assert ledger.last["live-1"][0] == 100
        # what /metrics exports: every answered message counted in a batch and timed to its ack
        stats = engine.ingestor.stats
        # the worker counts a batch after acknowledging (and timing) its messages
        assert wait_for(lambda: stats["latency_count"] == 3 and stats["batch_reports"] == 3, 10,
                        "the third ack and its batch to be counted")
        assert 1 <= stats["batches"] <= 3
        assert 0 < stats["latency_seconds_sum"] < 30
        device.close()
    finally:
        engine.stop()


def test_connected_means_subscribed(mosquitto):
    """`connected` (what `serve` waits for before it logs that it is serving) is set on the SUBACK
    of the engine's subscription, not on the CONNACK: a report published once it is set reaches
    the engine. (A refused subscription is logged; Mosquitto 2.0 grants one its ACL denies and
    withholds the messages instead, so it is not shown here.)"""
    engine = MqttIngest(mosquitto.url, Ingestor(MemoryLedger()), client_id="engine-suback")
    subacks = []
    engine._client.on_subscribe = lambda *a: (subacks.append(a[2]), engine._on_subscribe(*a))
    try:
        engine.start()
        assert engine.connected.wait(10)
        assert subacks == [engine._subscription]
    finally:
        engine.stop()


def test_reports_queued_while_the_engine_is_down_are_delivered_on_reconnect(mosquitto):
    ledger = MemoryLedger()
    engine = MqttIngest(mosquitto.url, Ingestor(ledger, min_interval_s=0), client_id="engine-persist").start()
    assert engine.connected.wait(10)
    engine.stop()  # the persistent session (clean_session=False) stays on the broker
    device = Device(mosquitto, "queued-1")
    for rid in (1, 2, 3):
        device.publish("$aws/things/queued-1/defender/metrics/json", payload(rid))
    engine = MqttIngest(mosquitto.url, Ingestor(ledger, min_interval_s=0), client_id="engine-persist").start()
    try:
        got = device.wait_for(3)
        assert [(r.accepted, r.report_id) for r in got] == [(True, 1), (True, 2), (True, 3)]
        assert [r["header"]["report_id"] for r in ledger.reports["queued-1"]] == [1, 2, 3]
    finally:
        device.close()
        engine.stop()


def test_mqtt_ingest_reconnects_after_a_broker_restart(tmp_path):
    from fixtures import Mosquitto
    broker = Mosquitto(tmp_path / "b").start()
    ledger = MemoryLedger()
    engine = MqttIngest(broker.url, Ingestor(ledger, min_interval_s=0), client_id="engine-restart",
                        reconnect_delay=(1, 2)).start()
    try:
        assert engine.connected.wait(10)
        broker.stop()  # persistence is off: the session is gone, on_connect subscribes again
        # seen gone before the broker is back: else `connected`, still set from before the
        # restart, would let the report below go out before the engine has subscribed again
        wait_for(lambda: not engine.connected.is_set(), 10, "the engine to notice the broker is gone")
        broker.start()
        assert engine.connected.wait(30)
        device = Device(broker, "after-restart")
        device.publish("$aws/things/after-restart/defender/metrics/json", payload(5))
        assert device.wait_for(1)[0].accepted
        device.close()
    finally:
        engine.stop()
        broker.stop()


def test_bounded_queue_applies_backpressure(mosquitto, caplog):
    """With a queue of 2 and a slow sink, nothing is lost and the queue never grows past 2."""
    seen_sizes = []

    class SlowLedger(MemoryLedger):
        def accept(self, thing, report_long, received_ms):
            seen_sizes.append(engine._queue.qsize())
            time.sleep(0.02)
            super().accept(thing, report_long, received_ms)

    ledger = SlowLedger()
    engine = MqttIngest(mosquitto.url, Ingestor(ledger, min_interval_s=0), client_id="engine-slow",
                        queue_size=2).start()
    try:
        assert engine.connected.wait(10)
        device = Device(mosquitto, "burst")
        for rid in range(1, 41):
            device.client.publish("$aws/things/burst/defender/metrics/json", payload(rid), qos=1)
        got = device.wait_for(40)
        assert all(r.accepted for r in got)
        assert [r["header"]["report_id"] for r in ledger.reports["burst"]] == list(range(1, 41))
        assert max(seen_sizes) <= 2
        assert "the engine is behind: 2 reports queued" in caplog.text
        device.close()
    finally:
        engine.stop()


def test_wire_format_doc_lists_every_code_and_field():
    from pathlib import Path

    from garrison.wire import schema
    from garrison.detect.ingest.frontdoor import ERROR_CODES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "wire-format.md").read_text()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in doc
    for long_path, short_path, _ in schema.walk():
        assert f"| `{long_path}` | `{short_path}` |" in doc


def test_mqtt_ingest_over_mutual_tls(tls_mosquitto, certs):
    import ssl

    ledger = MemoryLedger()
    cert, key = certs.client("garrison-detect")
    engine = MqttIngest(tls_mosquitto.url, Ingestor(ledger), client_id="engine-tls",
                        tls=(str(certs.ca), str(cert), str(key))).start()
    dev_cert, dev_key = certs.client("tls-dev")
    device = new_client("tls-dev")
    device.tls_set(ca_certs=str(certs.ca), certfile=str(dev_cert), keyfile=str(dev_key),
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    got, done = [], threading.Event()
    device.on_message = lambda c, u, msg: (got.append(replies.parse(msg.topic, msg.payload)), done.set())
    device.connect(tls_mosquitto.host, tls_mosquitto.port)
    device.loop_start()
    try:
        assert engine.connected.wait(15)
        device.subscribe("$aws/things/tls-dev/defender/metrics/json/+", 1)
        device.publish("garrison/sync", b"", qos=1).wait_for_publish(10)
        device.publish("$aws/things/tls-dev/defender/metrics/json", payload(8), qos=1)
        assert done.wait(15) and got[0].accepted and got[0].report_id == 8
    finally:
        device.loop_stop()
        device.disconnect()
        engine.stop()


def test_the_real_engine_is_a_sink(aws_reports, tmp_path):
    """The contract with garrison.detect.engine: every AWS fixture through Ingestor into the real engine."""
    from garrison.detect.engine import Engine
    from garrison.detect.state.store import Store

    store = Store(str(tmp_path / "engine.db"))
    try:
        engine = Engine(store)
        ingestor = Ingestor(engine, min_interval_s=300)
        for i, (name, fmt, rid) in enumerate(FIXTURES):
            thing = f"aws-{i}"
            reply = ingestor.handle(f"$aws/things/{thing}/defender/metrics/{fmt}",
                                    (aws_reports / name).read_bytes(), T0)
            assert reply.accepted, reply
            assert engine.last_report(thing) == (rid, T0)
            again = ingestor.handle(f"$aws/things/{thing}/defender/metrics/{fmt}",
                                    (aws_reports / name).read_bytes(), T0 + 5)
            assert again.accepted and engine.last_report(thing) == (rid, T0)  # not re-recorded
        strict = Ingestor(engine, strict=True)
        assert strict.handle("$aws/things/aws-0/defender/metrics/json", payload(1_900_000_000_000),
                             T0 + 600_000).accepted
        assert strict.handle("$aws/things/never-seen/defender/metrics/json", payload(1),
                             T0).error_code == UNREGISTERED_THING
    finally:
        store.close()


# ---- fabricated history (issue 10 item 10) ------------------------------------------------------

def test_a_new_thing_cannot_backdate_its_reports(ingestor, ledger):
    """Fails on the old code: the 7 days of ids below were all accepted as a spooled backlog."""
    from garrison.detect.ingest.frontdoor import REPORT_TOO_OLD
    topic = "$aws/things/forger/defender/metrics/json"
    now = T0
    fabricated = [now - 7 * 86_400_000 + 60_000 + k * 300_000 for k in range(20)]
    outcomes = [ingestor.handle(topic, payload(rid), now) for rid in fabricated]
    assert [r.error_code for r in outcomes] == [REPORT_TOO_OLD] * 20
    assert "before the thing was first seen" in outcomes[0].error_message
    assert "forger" not in ledger.reports
    # a first report made a moment before it arrived is fine
    assert ingestor.handle(topic, payload(now - 2_000), now).accepted


def test_ids_older_than_the_spool_keeps_are_refused_but_counters_and_seconds_are_not(ingestor):
    from garrison.detect.ingest.frontdoor import REPORT_TOO_OLD
    topic = "$aws/things/{}/defender/metrics/json"
    reply = ingestor.handle(topic.format("a"), payload(T0 - 8 * 86_400_000), T0)
    assert reply.error_code == REPORT_TOO_OLD and "7 days" in reply.error_message
    assert ingestor.handle(topic.format("b"), payload(7), T0).accepted              # a counter
    assert ingestor.handle(topic.format("c"), payload(1530304554), T0).accepted     # epoch seconds


def test_a_known_thing_cannot_date_reports_before_it_was_first_seen(tmp_path):
    """With the real engine: first seen is the thing's registration (its first report)."""
    from garrison.detect.clock import ManualClock
    from garrison.detect.engine import Engine
    from garrison.detect.ingest.frontdoor import REPORT_TOO_OLD
    from garrison.detect.state.store import Store
    engine = Engine(Store(tmp_path / "e.db"), ManualClock(T0 / 1000), ml=None)
    ingestor = Ingestor(engine, min_interval_s=300)
    topic = "$aws/things/t/defender/metrics/json"
    assert ingestor.handle(topic, payload(7), T0).accepted  # a counter id: dated by its arrival
    assert engine.store.first_seen("t") == T0
    now = T0 + 3_600_000
    # higher than 7, so not stale: but it dates the report 5 days before the thing was first seen
    backdated = ingestor.handle(topic, payload(T0 - 5 * 86_400_000), now)
    assert backdated.error_code == REPORT_TOO_OLD
    # the hour since it was first seen is fair game (a spooled backlog)
    assert ingestor.handle(topic, payload(T0 + 600_000), now).accepted
    assert engine.store.last_report("t") == (T0 + 600_000, T0 + 600_000)
