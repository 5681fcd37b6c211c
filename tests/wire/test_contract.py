"""The wire contract (garrison.wire): one set of rules that device and engine both derive from."""
import ast
import json
import math
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from garrison.agent import report
from garrison.detect.ingest.validate import Invalid, validate
from garrison.wire import codec, limits, names, replies, schema, topics, values

ROOT = Path(__file__).resolve().parents[2]
NAME_CHARS = st.sampled_from("abcXYZ019:_-")
valid_names = st.text(NAME_CHARS, min_size=1, max_size=128)


# ------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("rule", [names.THING, names.CUSTOM_METRIC, names.PROFILE, names.BEHAVIOR])
def test_every_name_rule_is_1_to_128_of_the_same_characters(rule):
    assert rule.check("a:b_c-D9") == "a:b_c-D9"
    assert rule.valid("x" * 128) and not rule.valid("x" * 129)
    for bad in ("", "pump pressure", "a/b", "a+b", "a#", "café", "a\x00", None, 7, b"bytes"):
        assert not rule.valid(bad)
        with pytest.raises(ValueError) as err:
            rule.check(bad)
        assert isinstance(err.value, names.InvalidName) and err.value.rule is rule
        assert rule.what in str(err.value) and "1-128 characters of [a-zA-Z0-9:_-]" in str(err.value)


def test_only_custom_metric_names_keep_out_of_aws_namespace():
    assert names.THING.valid("aws:thing") and names.PROFILE.valid("aws:x")
    with pytest.raises(names.InvalidName, match='custom metric names .* must not start with "aws:"'):
        names.check_custom_metric_name("aws:cpu")


def test_thing_name_from_a_host_name():
    assert names.thing_name_from("my host.local") == "my-host-local"
    assert names.thing_name_from("x" * 300) == "x" * 128
    assert names.thing_name_from("") == "garrison-device"


# ------------------------------------------------------------------------------------ topics

@settings(max_examples=200, deadline=None)
@given(thing=valid_names, fmt=st.sampled_from(topics.FORMATS), outcome=st.sampled_from(topics.OUTCOMES))
def test_topics_round_trip(thing, fmt, outcome):
    assert topics.parse_report_topic(topics.report_topic(thing, fmt)) == (thing, fmt)
    assert topics.parse_reply_topic(topics.reply_topic(thing, fmt, outcome)) == (thing, fmt, outcome)
    assert topics.parse_report_topic(topics.reply_topic(thing, fmt, outcome)) is None
    assert topics.parse_reply_topic(topics.report_topic(thing, fmt)) is None
    assert topics.reply_safe(thing)


def test_topic_layout_is_aws_device_defender():
    # AWS IoT Device Defender's documented topics, spelled out once here to pin the contract
    assert topics.report_topic("cam-1", "cbor") == "$aws/things/cam-1/defender/metrics/cbor"
    assert topics.reply_topics("cam-1", "json") == ("$aws/things/cam-1/defender/metrics/json/accepted",
                                                    "$aws/things/cam-1/defender/metrics/json/rejected")
    assert topics.ENGINE_SUBSCRIPTIONS == ("$aws/things/+/defender/metrics/json", "$aws/things/+/defender/metrics/cbor")
    assert topics.reply_filter() == "$aws/things/+/defender/metrics/+/+"
    assert topics.report_filter("%u", "json") == "$aws/things/%u/defender/metrics/json"
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        topics.report_topic("cam-1", "xml")
    for bad in ("$aws/things/a/defender/metrics/xml", "$aws/things//defender/metrics/json", None,
                "$aws/things/a/b/defender/metrics/json", "aws/things/a/defender/metrics/json"):
        assert topics.parse_report_topic(bad) is None
    assert topics.parse_reply_topic("$aws/things/a/defender/metrics/json/maybe") is None
    for unsafe in ("a+b", "a#", "a\x00", "a\n", "\ud800", "x" * 1025):
        assert not topics.reply_safe(unsafe)


# ------------------------------------------------------------------------------------ replies

@pytest.mark.parametrize("fmt", topics.FORMATS)
def test_the_engine_builds_what_the_device_parses(fmt):
    ok = replies.accepted("pump-1", fmt, 42, 1_795_629_234_414)
    assert ok.topic == topics.reply_topic("pump-1", fmt, "accepted")
    assert codec.decode(ok.payload, fmt) == {"thingName": "pump-1", "reportId": 42, "status": "ACCEPTED",
                                             "timestamp": 1_795_629_234_414}
    assert list(codec.decode(ok.payload, fmt)) == ["thingName", "reportId", "status", "timestamp"]  # AWS's order
    parsed = replies.parse(ok.topic, ok.payload)
    assert (parsed.accepted, parsed.thing, parsed.report_id, parsed.timestamp) == (True, "pump-1", 42, 1_795_629_234_414)

    no = replies.rejected("pump-1", fmt, None, replies.INVALID_PAYLOAD, "x" * 500, 5)
    body = codec.decode(no.payload, fmt)
    assert "reportId" not in body and body["status"] == "REJECTED"
    assert body["statusDetails"]["ErrorCode"] == "InvalidPayload"
    assert len(body["statusDetails"]["ErrorMessage"]) == limits.MAX_ERROR_MESSAGE_CHARS
    parsed = replies.parse(no.topic, no.payload)
    assert (parsed.accepted, parsed.report_id, parsed.error_code) == (False, None, "InvalidPayload")
    assert parsed.error_message == body["statusDetails"]["ErrorMessage"] == no.error_message


def test_a_reply_that_does_not_decode_still_counts_and_other_topics_are_not_replies():
    garbled = replies.parse(topics.reply_topic("t", "cbor", "rejected"), b"\xff\x00")
    assert garbled is not None and not garbled.accepted and garbled.error_code == "Unknown"
    assert replies.parse(topics.report_topic("t", "json"), b"{}") is None
    assert replies.parse("garrison/alerts/t", b"{}") is None


def test_error_codes_are_aws_first_then_garrisons_extensions():
    assert replies.AWS_ERROR_CODES == ("InvalidPayload", "Throttled")
    assert set(replies.ERROR_CODES) == set(replies.AWS_ERROR_CODES) | set(replies.EXTENSION_ERROR_CODES)
    doc = (ROOT / "docs" / "wire-format.md").read_text()
    for code in replies.ERROR_CODES:   # each one documented, with its origin
        origin = "AWS" if code in replies.AWS_ERROR_CODES else "Garrison extension"
        assert f"| `{code}` | {origin} |" in doc


# ------------------------------------------------------------------------------------ codecs

def test_codecs_refuse_what_the_format_cannot_carry():
    with pytest.raises(codec.CodecError, match="JSON"):
        codec.encode({"x": math.nan}, "json")
    with pytest.raises(codec.CodecError, match="malformed CBOR"):
        codec.decode(b"\xff\x00", "cbor")
    with pytest.raises(codec.CodecError, match="unknown format"):
        codec.encode({}, "xml")
    assert codec.decode(codec.encode({"a": [1, "b"]}, "cbor"), "cbor") == {"a": [1, "b"]}
    assert codec.encode({"é": 1}, "json") == b'{"\\u00e9":1}'   # ASCII on the wire


# ------------------------------------------------------------------ values: agent == engine

def engine_takes(typed):
    """Whether the real validator accepts a report carrying this one custom metric."""
    doc = {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"m": [typed]}}
    for fmt in topics.FORMATS:   # through the wire, as the engine receives it
        try:
            validate(codec.decode(codec.encode(doc, fmt), fmt))
        except (Invalid, codec.CodecError):
            return False
    return True


scalars = st.one_of(
    st.integers(-(2**64), 2**64), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(max_size=3), st.sampled_from(["192.0.2.1", "2001:db8::1", "10.0.0.256", "::ffff:1.2.3.4",
                                          "x" * 1024, "x" * 1025, "\ud800", "1.2.3.4\x00"]))
custom_values = st.one_of(scalars, st.lists(scalars, max_size=4),
                          st.dictionaries(st.sampled_from(values.CUSTOM_METRIC_TYPES + ("bogus",)),
                                          st.one_of(scalars, st.lists(scalars, max_size=4)), max_size=2))


@settings(max_examples=600, deadline=None)
@given(custom_values)
def test_the_agent_sends_a_custom_value_exactly_when_the_engine_takes_it(value):
    try:
        typed = values.custom_metric(value)
    except values.InvalidValue:
        typed = None
    if typed is not None:
        assert engine_takes(typed[0]), f"the agent would send {typed!r}; the engine refuses it"
    elif isinstance(value, dict) and len(value) == 1:
        assert not engine_takes(value), f"the agent refuses {value!r}; the engine takes it"


@pytest.mark.parametrize("value, rule", [
    ([21.0, float("nan")], values.NUMBER_RULE),
    (float("inf"), values.NUMBER_RULE),
    (2**63, values.NUMBER_RULE),
    ({"ip_list": ["192.0.2.1", "not-an-address"]}, values.IP_RULE),
    (["x" * 1025], values.TEXT_RULE),
    (True, "boolean"),
    ([1, "a"], "only numbers or only strings"),
])
def test_a_bad_value_names_the_rule(value, rule):
    with pytest.raises(ValueError) as err:
        values.custom_metric(value)
    assert rule in str(err.value)
    assert not engine_takes({"number": value} if not isinstance(value, (list, dict)) else
                            (value if isinstance(value, dict) else {"number_list": value}))


def test_the_validator_and_the_agent_share_the_limits():
    doc = report.build(1, custom_metrics={"big": limits.MAX_INT, "small": limits.MIN_CUSTOM_NUMBER,
                                          "long": ["x" * limits.MAX_STRING_CHARS]})
    assert validate(json.loads(report.encode(doc)))["custom_metrics"]["big"] == [{"number": limits.MAX_INT}]
    assert validate(cbor2.loads(report.encode(doc, "cbor")))


# ------------------------------------------------------------------ one spelling of each rule

SOURCE_DIRS = ("agent", "collectors", "detect", "firmware-sim", "wire", "bench")
OWNER = {"defender/metrics": "wire/topics.py", "$aws/things": "wire/topics.py",   # the topic layout
         "garrison/things": "wire/topics.py", "$CONTROL": "wire/topics.py",
         "0-9:_-": "wire/names.py", "0-9_:-": "wire/names.py"}                    # the name rule's characters


def _code_strings(tree):
    """String constants that are code, not docstrings (prose may name a topic; code may not)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_nothing_but_the_wire_contract_spells_a_topic_or_a_name_rule():
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for lineno, text in _code_strings(ast.parse(path.read_text(), rel)):
                offenders += [f"{rel}:{lineno}: {text[:60]!r}" for needle, owner in OWNER.items()
                              if needle in text and rel != owner]
    assert offenders == [], "use garrison.wire.topics / garrison.wire.names instead:\n" + "\n".join(offenders)


def test_the_guard_sees_a_spelled_topic():
    tree = ast.parse('"""Docs may say $aws/things/{thing}/defender/metrics/json."""\nT = f"$aws/things/{t}/defender/metrics/json"')
    assert [line for line, _ in _code_strings(tree)] == [2, 2]


def test_the_docs_field_table_is_the_generated_one():
    doc = (ROOT / "docs" / "wire-format.md").read_text()
    assert schema.markdown_table() in doc, "regenerate docs/wire-format.md's table with schema.markdown_table()"


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_a_rejection_the_device_reads_is_bounded_and_cannot_drive_its_log(fmt):
    """A hostile broker or engine chooses ErrorCode and ErrorMessage: the device keeps (and logs)
    at most MAX_ERROR_MESSAGE_CHARS of the message and 64 of the code, control characters escaped."""
    hostile = "\x1b[2J\rreport 7 accepted\n" * 5000
    body = {"thingName": "dev", "reportId": 7, "status": "REJECTED", "timestamp": 1,
            "statusDetails": {"ErrorCode": "Bad\x1b]0;pwned\x07" * 40, "ErrorMessage": hostile}}
    reply = replies.parse(topics.reply_topic("dev", fmt, "rejected"), codec.encode(body, fmt))
    assert not reply.accepted and reply.report_id == 7
    assert len(reply.error_message) <= limits.MAX_ERROR_MESSAGE_CHARS and len(reply.error_code) <= 64
    assert reply.error_message.isprintable() and reply.error_code.isprintable()
    assert reply.error_message.startswith("\\x1b[2J\\rreport 7 accepted\\n")
    # what the engine sends stays as it was
    honest = replies.parse(topics.reply_topic("dev", fmt, "rejected"),
                           replies.rejected("dev", fmt, 7, "InvalidPayload", "metrics: expected an object", 1).payload)
    assert (honest.error_code, honest.error_message) == ("InvalidPayload", "metrics: expected an object")
