"""The interval_sockets extension at the engine: validated and bounded from the one schema, and the
metric catalogue judges ports and destinations over the union of snapshot and interval."""
import pytest

from garrison.agent import report
from garrison.wire import schema
from garrison.detect.judge import metrics
from garrison.detect.ingest.validate import Invalid, validate


def _report(interval=None, snapshot=True):
    metrics_group = {}
    if snapshot:
        metrics_group = {
            "listening_tcp_ports": {"ports": [{"port": 22}], "total": 1},
            "listening_udp_ports": {"ports": [{"port": 53}], "total": 1},
            "tcp_connections": {"established_connections": {
                "connections": [{"remote_addr": "10.0.0.1:1883", "local_port": 40000}], "total": 1}}}
    if interval is not None:
        metrics_group["interval_sockets"] = interval
    return {"header": {"report_id": 1, "version": "1.0"}, "metrics": metrics_group}


INTERVAL = {
    "connections": [{"remote_addr": "203.0.113.66:443", "protocol": "tcp", "local_port": 41000, "count": 3,
                     "bytes_in": 10, "bytes_out": 20},
                    {"remote_addr": "[2001:db8:0::1]:53", "protocol": "udp", "count": 1}],
    "listening_ports": [{"port": 4444, "protocol": "tcp", "count": 1}, {"port": 69, "protocol": "udp", "count": 2}],
    "events": 7, "overflow": 0, "lost": 0,
}


def test_extension_round_trips_in_short_names_and_cbor():
    payload = report.encode(_report(INTERVAL), "cbor", short_names=True)
    short = report.decode(payload, "cbor")
    assert short["met"]["isk"]["cs"][0]["rad"] == "203.0.113.66:443" and short["met"]["isk"]["lps"][0]["pr"] == "tcp"
    assert validate(short) == _report(INTERVAL)


@pytest.mark.parametrize("bad, where", [
    ({"connections": [{"remote_addr": "203.0.113.66:443", "protocol": "sctp"}]}, "protocol: expected one of tcp, udp"),
    ({"connections": [{"remote_addr": "evil", "protocol": "tcp"}]}, "remote_addr"),
    ({"listening_ports": [{"port": 70000, "protocol": "tcp"}]}, "port"),
    ({"listening_ports": [{"port": 1, "protocol": "udp", "count": -1}]}, "count"),
    ({"listening_ports": [{"port": 1, "protocol": "tcp"}] * (schema.INTERVAL_MAX_ITEMS + 1)},
     f"at most {schema.INTERVAL_MAX_ITEMS} entries"),
    ({"events": True}, "events"),
])
def test_extension_is_bounded_and_typed(bad, where):
    with pytest.raises(Invalid) as caught:
        validate(_report(bad))
    assert caught.value.code == "InvalidPayload" and where in caught.value.message
    assert "interval_sockets" in caught.value.message


def test_ports_and_destinations_are_the_union_of_snapshot_and_interval():
    doc = validate(_report(INTERVAL))
    assert metrics.extract(doc, "aws:listening-tcp-ports") == [22, 4444]
    assert metrics.extract(doc, "aws:listening-udp-ports") == [53, 69]
    assert metrics.extract(doc, "aws:destination-ip-addresses") == ["10.0.0.1", "2001:db8::1", "203.0.113.66"]
    # counts stay the snapshot's
    assert metrics.extract(doc, "aws:num-listening-tcp-ports") == 1
    assert metrics.extract(doc, "aws:num-established-tcp-connections") == 1


def test_without_the_extension_nothing_changes_and_an_interval_alone_is_a_datapoint():
    plain = validate(_report())
    assert metrics.extract(plain, "aws:listening-tcp-ports") == [22]
    assert metrics.extract(plain, "aws:destination-ip-addresses") == ["10.0.0.1"]
    alone = validate(_report(INTERVAL, snapshot=False))
    assert metrics.extract(alone, "aws:listening-tcp-ports") == [4444]
    assert metrics.extract(alone, "aws:destination-ip-addresses") == ["2001:db8::1", "203.0.113.66"]
    # a protocol with nothing in the interval and no snapshot group gives no datapoint, not []
    only_tcp = validate(_report({"listening_ports": [{"port": 4444, "protocol": "tcp"}]}, snapshot=False))
    assert metrics.extract(only_tcp, "aws:listening-udp-ports") is None
