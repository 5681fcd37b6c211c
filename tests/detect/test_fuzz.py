"""Hostile input: handle() never raises and always answers well-formed (or drops, logged).

Property tests with hypothesis on arbitrary bytes, JSON-ish trees, mutated valid reports and
hostile topics; then a live flood of bad payloads through MqttIngest on a real Mosquitto.
"""
import copy
import json
import math
import random

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from garrison.wire import replies, schema
from garrison.agent import report
from garrison.agent.transports.paho_compat import new_client
from garrison.detect.ingest.frontdoor import ERROR_CODES, Ingestor, parse_topic
from garrison.detect.ingest.mqtt import MqttIngest
from ledger import MemoryLedger
from garrison.detect.ingest.validate import Invalid, validate

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1_800_000_000_000
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
TREES = st.recursive(SCALARS, lambda children: st.lists(children, max_size=5)
                     | st.dictionaries(st.text(max_size=12), children, max_size=5), max_leaves=40)
KEYS = sorted({name for _, _, f in schema.walk() for name in (f.long, f.short)})


def assert_well_formed(reply, topic, fmt):
    """The reply is AWS-shaped, on the right topic, decodable in the request's format."""
    assert reply is not None
    body = cbor2.loads(reply.payload) if fmt == "cbor" else json.loads(reply.payload)
    assert body["thingName"] == reply.thing and isinstance(body["timestamp"], int)
    if reply.accepted:
        assert reply.topic == topic + "/accepted"
        assert list(body) == ["thingName", "reportId", "status", "timestamp"]
        assert body["status"] == "ACCEPTED" and isinstance(body["reportId"], int)
    else:
        assert reply.topic == topic + "/rejected"
        assert body["status"] == "REJECTED" and reply.error_code in ERROR_CODES
        assert set(body["statusDetails"]) == {"ErrorCode", "ErrorMessage"}
        assert body["statusDetails"]["ErrorCode"] == reply.error_code
        assert isinstance(body["statusDetails"]["ErrorMessage"], str)
        assert body.get("reportId") == reply.report_id
    parsed = replies.parse(reply.topic, reply.payload)
    assert parsed.accepted == reply.accepted and parsed.report_id == reply.report_id


def fresh():
    return Ingestor(MemoryLedger(), min_interval_s=0)


@FAST
@given(data=st.binary(max_size=600), fmt=st.sampled_from(["json", "cbor"]))
def test_arbitrary_bytes(data, fmt):
    topic = f"$aws/things/fuzz/defender/metrics/{fmt}"
    assert_well_formed(fresh().handle(topic, data, T0), topic, fmt)


@FAST
@given(tree=TREES, fmt=st.sampled_from(["json", "cbor"]))
def test_arbitrary_json_ish_trees(tree, fmt):
    topic = f"$aws/things/fuzz/defender/metrics/{fmt}"
    data = json.dumps(tree).encode() if fmt == "json" else cbor2.dumps(tree)
    assert_well_formed(fresh().handle(topic, data, T0), topic, fmt)


def valid_report():
    return {"header": {"report_id": 99, "version": "1.0"},
            "metrics": {"listening_tcp_ports": {"ports": [{"port": 22, "interface": "eth0"}], "total": 1},
                        "listening_udp_ports": {"ports": [{"port": 53}], "total": 1},
                        "tcp_connections": {"established_connections": {
                            "connections": [{"remote_addr": "10.0.0.1:443", "local_port": 40000,
                                             "local_interface": "eth0"}], "total": 1}},
                        "network_stats": {"bytes_in": 1, "bytes_out": 2, "packets_in": 3, "packets_out": 4}},
            "custom_metrics": {"a": [{"number": 1}], "b": [{"number_list": [1.5]}],
                               "c": [{"string_list": ["x"]}], "d": [{"ip_list": ["::1"]}]}}


def paths(doc, prefix=()):
    """Every (path) into a nested dict/list document."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from paths(value, prefix + (i,))


ALL_PATHS = [p for p in paths(valid_report()) if p]
NASTY = st.sampled_from([None, True, False, -1, 0, 2**64, -2**64, 1.5, float("nan"), float("inf"),
                         "", "x" * 5000, "1.0", [], {}, [[[[[]]]]], {"number": 1}, [{"number": 1}],
                         "10.0.0.1:99999", "\ud800", b"bytes", 65536])


def set_at(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def encode_any(doc, fmt, short):
    doc = schema.to_short(doc) if short else doc
    if fmt == "cbor":
        try:
            return cbor2.dumps(doc)
        except (UnicodeEncodeError, ValueError):
            assume(False)  # a lone surrogate cannot be CBOR text; JSON escapes it (tested there)
    return json.dumps(doc, default=lambda o: o.decode("latin-1")).encode("utf-8", "surrogatepass")


@FAST
@given(edits=st.lists(st.tuples(st.sampled_from(ALL_PATHS), NASTY), min_size=1, max_size=4),
       fmt=st.sampled_from(["json", "cbor"]), short=st.booleans())
def test_mutated_valid_reports(edits, fmt, short):
    doc = valid_report()
    for path, value in edits:
        try:
            set_at(doc, path, copy.deepcopy(value))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced a parent
    topic = f"$aws/things/fuzz/defender/metrics/{fmt}"
    reply = fresh().handle(topic, encode_any(doc, fmt, short), T0)
    assert_well_formed(reply, topic, fmt)


@FAST
@given(path=st.sampled_from(ALL_PATHS), value=NASTY)
def test_validate_accepts_or_raises_invalid_only(path, value):
    doc = valid_report()
    set_at(doc, path, value)
    try:
        out = validate(doc)
    except Invalid as exc:
        assert exc.code == "InvalidPayload" and exc.message
        return
    # whatever passes is clean: no NaN, no bools, ints in range
    for leaf_path in paths(out):
        leaf = out
        for key in leaf_path:
            leaf = leaf[key]
        assert not isinstance(leaf, bool)
        assert not (isinstance(leaf, float) and not math.isfinite(leaf))
        if isinstance(leaf, int):
            assert -2**63 <= leaf < 2**63


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_deep_nesting_giant_lists_huge_numbers(fmt):
    topic = f"$aws/things/fuzz/defender/metrics/{fmt}"
    deep = "[" * 100_000 + "]" * 100_000
    cases = [
        deep.encode() if fmt == "json" else b"\x81" * 100_000 + b"\x80",
        (b'{"header":{"report_id":1' + b"0" * 5000 + b',"version":"1.0"}}') if fmt == "json"
        else cbor2.dumps({"header": {"report_id": 10**5000, "version": "1.0"}}),
        encode_any({"header": {"report_id": 1, "version": "1.0"},
                    "metrics": {"listening_tcp_ports": {"ports": [{"port": 1}] * 20000}}}, fmt, False),
        encode_any({"header": {"report_id": 1, "version": "1.0"},
                    "custom_metrics": {"x": [{"number_list": list(range(30000))}]}}, fmt, False),
        b'{"header":{"report_id":1,"version":"1.0"},"custom_metrics":{"x":[{"number":NaN}]}}',
        b'{"header":{"report_id":1,"version":"1.0"},"custom_metrics":{"x":[{"number":Infinity}]}}',
        b'{"header":{"report_id":1,"version":"\xff\xfe"}}',  # invalid UTF-8
        b"\xc1\x1b\xff\xff\xff\xff\xff\xff\xff\xff",          # CBOR datetime tag, absurd value
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",              # CBOR byte string claiming 2**64 bytes
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",              # CBOR array claiming 2**64 items
        b"\xbf" * 50_000,                                     # unterminated indefinite maps
    ]
    ingestor = fresh()
    for data in cases:
        reply = ingestor.handle(topic, data, T0)
        assert_well_formed(reply, topic, fmt)
    assert ingestor.stats.get("accepted", 0) <= 2  # the two legitimately big, valid reports at most


HOSTILE_THING = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200) | st.sampled_from(
    ["+", "#", "", "a/b", "\x00", "../..", "x" * 129, "x" * 5000, "$SYS", "\u202e", "a b", "\x7f"])


@FAST
@given(thing=HOSTILE_THING, fmt=st.sampled_from(["json", "cbor", "xml", ""]))
def test_hostile_thing_names(thing, fmt):
    topic = f"$aws/things/{thing}/defender/metrics/{fmt}"
    reply = fresh().handle(topic, report.encode(report.build(1, custom_metrics={"n": 1}), "cbor" if fmt == "cbor" else "json"), T0)
    if reply is None:
        return  # dropped: no safe reply topic
    assert parse_topic(topic) == (thing, fmt)
    assert not any(c in reply.topic for c in "+#\x00") and reply.topic.count("/") == 6
    assert_well_formed(reply, topic, fmt)


@FAST
@given(topic=st.text(max_size=120) | st.binary(max_size=50) | st.none() | st.integers())
def test_hostile_topics(topic):
    reply = fresh().handle(topic, b"{}", T0)
    if reply is not None:
        assert parse_topic(topic) is not None
        assert_well_formed(reply, topic, parse_topic(topic)[1])


# -------------------------------------------------------------- live: the engine keeps serving

def bad_payloads(count, seed=7):
    rng = random.Random(seed)
    base = report.encode(report.build(1, network_stats={"bytes_in": 1}), "json")
    makers = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))),
        lambda: base[: rng.randint(0, len(base) - 1)],
        lambda: base.replace(b'"1.0"', b'"2.0"'),
        lambda: base.replace(b'"bytes_in":1', b'"bytes_in":-1'),
        lambda: b'{"header":{"report_id":1,"version":"1.0"},"custom_metrics":{"x":{"number":1}}}',
        lambda: b"[" * 5000,
        lambda: json.dumps({"hed": {"rid": rng.randint(1, 10**6), "v": "1.0"}, "met": {"tp": "x"}}).encode(),
    ]
    return [rng.choice(makers)() for _ in range(count)]


def test_flood_of_bad_payloads_then_a_good_report_is_accepted(mosquitto):
    import threading

    ledger = MemoryLedger()
    engine = MqttIngest(mosquitto.url, Ingestor(ledger, min_interval_s=300), client_id="engine-flood").start()
    received, done = [], threading.Event()

    def on_message(client, userdata, msg):
        received.append(replies.parse(msg.topic, msg.payload))
        if received[-1].accepted:
            done.set()

    device = new_client("flooder")
    device.on_message = on_message
    device.connect(mosquitto.host, mosquitto.port)
    device.loop_start()
    try:
        assert engine.connected.wait(10)
        device.subscribe("$aws/things/+/defender/metrics/+/+", 1)
        device.publish("garrison/sync", b"", qos=1).wait_for_publish(10)
        bad = bad_payloads(3000)
        for i, data in enumerate(bad):
            fmt = "cbor" if i % 2 else "json"
            device.publish(f"$aws/things/flood-{i % 5}/defender/metrics/{fmt}", data, qos=1)
        for i in range(50):  # thing names AWS refuses
            device.publish(f"$aws/things/flood.{i}!/defender/metrics/json", b"{}", qos=1)
        good = report.encode(report.build(424242, network_stats={"bytes_in": 7}), "json")
        device.publish("$aws/things/flood-good/defender/metrics/json", good, qos=1).wait_for_publish(30)
        assert done.wait(60), f"no ACCEPTED after {len(received)} replies"
        accepted = [r for r in received if r.accepted]
        assert [(r.thing, r.report_id) for r in accepted] == [("flood-good", 424242)]
        assert ledger.last["flood-good"][0] == 424242 and list(ledger.reports) == ["flood-good"]
        assert len(received) == len(bad) + 50 + 1  # every bad payload got its REJECTED, in order
        assert all(r.error_code == "InvalidPayload" for r in received[:len(bad)])
        assert all(r.error_code == "InvalidThingName" for r in received[len(bad):-1])
    finally:
        device.loop_stop()
        device.disconnect()
        engine.stop()
