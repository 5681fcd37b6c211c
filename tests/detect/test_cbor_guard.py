"""garrison.wire.cbor_guard and the front door's use of it: CBOR the report format never uses is
refused before it is decoded (issue 10: the shared-reference bomb, negative bignums)."""
import logging
import time

import cbor2
import pytest

from garrison.agent import report
from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.ingest.validate import INVALID_PAYLOAD, Invalid, validate
from garrison.wire import cbor_guard
from ledger import MemoryLedger

T0 = 1_800_000_000_000
TOPIC = "$aws/things/{}/defender/metrics/cbor"


def _head(major: int, n: int) -> bytes:
    """A CBOR item header (major type, argument)."""
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 256 ** size:
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


def shared_reference_bomb(zeros: int, refs: int, report_id: int = T0) -> bytes:
    """Issue 10's bomb: one custom metric value [{"number_list": [0] * zeros}] defined once with
    tag 28 and referenced from `refs` - 1 more custom metrics with tag 29."""
    shared = b"\xd8\x1c" + cbor2.dumps([{"number_list": [0] * zeros}])
    ref = b"\xd8\x1d\x00"
    out = bytearray(_head(5, 2) + cbor2.dumps("hed") + cbor2.dumps({"rid": report_id, "v": "1.0"}))
    out += cbor2.dumps("cmet") + _head(5, refs)
    for i in range(refs):
        out += cbor2.dumps(f"{i:x}") + (shared if i == 0 else ref)
    return bytes(out)


def negative_bignum_report(digits_bytes: int = 2000) -> bytes:
    """A report whose report id is a negative bignum (tag 3) of thousands of decimal digits."""
    bignum = b"\xc3" + _head(2, digits_bytes) + b"\xff" * digits_bytes
    return (_head(5, 2) + cbor2.dumps("hed") + _head(5, 2) + cbor2.dumps("rid") + bignum
            + cbor2.dumps("v") + cbor2.dumps("1.0") + cbor2.dumps("cmet") + cbor2.dumps({"n": [{"number": 1}]}))


def test_the_bomb_is_what_issue_10_describes():
    bomb = shared_reference_bomb(64_000, 8_000)
    assert len(bomb) <= report.MAX_PAYLOAD_BYTES  # passes the size check: it is the decoder's problem
    doc = cbor2.loads(shared_reference_bomb(100, 3))
    values = [v[0]["number_list"] for v in doc["cmet"].values()]
    assert len(values) == 3 and values[0] is values[1] is values[2]  # one list, three references


@pytest.mark.parametrize("payload,why", [
    (shared_reference_bomb(100, 3), "tag 28"),
    (b"\xd8\x1d\x00", "tag 29"),
    (cbor2.dumps({"t": cbor2.CBORTag(1, 5)}), "tag 1"),
    (negative_bignum_report(), "tag 3"),
    (b"\x9f\x01\x02\xff", "indefinite"),
    (b"\x7f\x61a\xff", "indefinite"),
    (b"\x1c", "reserved"),
    (b"\xf7", "simple value"),
    (b"\xf8\x20", "simple value"),
    (b"\x83\x01\x02", "claims more items"),
    (b"\x5a\xff\xff\xff\xff", "claims more bytes"),
    (b"\x9b" + b"\xff" * 8, "claims more items"),
    (b"\x01\x02", "bytes after"),
    (b"\x81" * 40 + b"\x00", "nested deeper"),
    (b"", "truncated"),
    (b"\x82\x01\x19", "truncated"),
])
def test_refused(payload, why):
    with pytest.raises(cbor_guard.CborRefused, match=why):
        cbor_guard.check(payload)


def test_item_and_string_bounds():
    assert cbor_guard.check(cbor2.dumps(list(range(100)))) == 101
    with pytest.raises(cbor_guard.CborRefused, match="more than 50 CBOR items"):
        cbor_guard.check(cbor2.dumps(list(range(100))), max_items=50)
    with pytest.raises(cbor_guard.CborRefused, match="more than 10 bytes"):
        cbor_guard.check(cbor2.dumps(["abcdef", "ghijkl"]), max_string_bytes=10)


@pytest.mark.parametrize("short", [False, True])
def test_real_reports_pass(aws_reports, short):
    from garrison.collectors.base import Connection
    conns = [Connection(4, "192.0.2.10", 40000 + i, f"198.51.100.{i % 250 + 1}", 443, "eth0") for i in range(300)]
    built = report.build(T0, connections=conns, network_stats={"bytes_in": 2**40, "packets_in": 3},
                         custom_metrics={"temp": -12.5, "load": [1, 2.5, -3], "names": ["a", "b"]})
    cbor_guard.check(report.encode(built, "cbor", short_names=short))
    for name in ("aws-sample-agent-2.0.0-long.cbor", "aws-sample-agent-2.0.0-short.cbor"):
        cbor_guard.check((aws_reports / name).read_bytes())
    cbor_guard.check(cbor2.dumps({"f": [True, False, None, 1.5, -2**64]}))


def test_the_ingestor_refuses_the_bomb_before_decoding_it():
    """Fails on the old code: a small bomb is a valid report there and is accepted."""
    ledger = MemoryLedger()
    ingestor = Ingestor(ledger, min_interval_s=0)
    reply = ingestor.handle(TOPIC.format("bomber"), shared_reference_bomb(1_000, 100), T0)
    assert not reply.accepted and reply.error_code == INVALID_PAYLOAD
    assert "tag 28" in reply.error_message and reply.report_id is None
    assert "bomber" not in ledger.reports
    started = time.monotonic()
    reply = ingestor.handle(TOPIC.format("bomber"), shared_reference_bomb(64_000, 8_000), T0)
    assert reply.error_code == INVALID_PAYLOAD and time.monotonic() - started < 1.0


def test_a_negative_bignum_is_invalid_payload_not_an_internal_error(caplog):
    """Fails on the old code: formatting the huge value raised ValueError -> InternalError and a
    traceback in the log for every such report."""
    ingestor = Ingestor(MemoryLedger(), min_interval_s=0)
    with caplog.at_level(logging.INFO, logger="garrison.ingest"):
        reply = ingestor.handle(TOPIC.format("big"), negative_bignum_report(), T0)
    assert reply.error_code == INVALID_PAYLOAD and "tag 3" in reply.error_message
    assert not any(r.exc_info for r in caplog.records)


def test_validate_formats_no_huge_value():
    """The validator on its own (a JSON decoder could hand it such an int too)."""
    with pytest.raises(Invalid) as caught:
        validate({"header": {"report_id": -(10 ** 5000), "version": "1.0"}, "custom_metrics": {"n": [{"number": 1}]}})
    assert caught.value.code == INVALID_PAYLOAD
    assert caught.value.message == "header.report_id: value is below the minimum 1"
