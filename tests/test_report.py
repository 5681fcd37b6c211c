"""The wire format: schema name forms, report building, capping, codecs."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from garrison.agent import report
from garrison.wire import schema
from garrison.collectors.base import Connection, ListeningSocket


def tcp(port, interface=None, family=4):
    return ListeningSocket("tcp", family, "0.0.0.0" if family == 4 else "::", port, interface)


def conn(remote, rport, lport=5000, interface="eth0", family=4):
    return Connection(family, "10.0.0.2", lport, remote, rport, interface)


def test_short_names_are_derived_from_the_schema(aws_reports):
    long_doc = json.loads((aws_reports / "aws-docs-example-long.json").read_text())
    short_doc = json.loads((aws_reports / "aws-docs-example-short.json").read_text())
    # AWS's own long and short examples translate into each other key for key
    assert set(schema.to_short(long_doc)["met"]) == set(short_doc["met"])
    assert schema.to_short(long_doc)["met"]["tc"] == short_doc["met"]["tc"]
    assert schema.to_long(short_doc)["metrics"]["tcp_connections"] == long_doc["metrics"]["tcp_connections"]


def test_mixed_dialect_is_read_as_long(aws_reports):
    # AWS's sample agent keeps long keys inside short `pts`
    mixed = json.loads((aws_reports / "aws-sample-agent-2.0.0-short.json").read_text())
    long_doc = schema.to_long(mixed)
    assert long_doc["metrics"]["listening_tcp_ports"] == {"ports": [{"interface": "0.0.0.0", "port": 2024}], "total": 1}
    assert long_doc["header"] == {"report_id": 1795390978, "version": "1.0"}
    assert long_doc["custom_metrics"] == {"cpu_usage": [{"number": 50.0}]}


def test_build_dedupes_ports_and_omits_wildcard_interface():
    built = report.build(7, listening_tcp=[tcp(22), tcp(22, family=6), tcp(80, "eth0"), tcp(80, "wlan0")])
    assert built["metrics"]["listening_tcp_ports"] == {
        "ports": [{"port": 22}, {"port": 80, "interface": "eth0"}, {"port": 80, "interface": "wlan0"}], "total": 3}
    assert built["header"] == {"report_id": 7, "version": "1.0"}


def test_connections_format_ipv6_in_brackets():
    built = report.build(1, connections=[conn("2001:db8::1", 443, family=6), conn("192.0.2.9", 8883)])
    entries = built["metrics"]["tcp_connections"]["established_connections"]["connections"]
    assert [e["remote_addr"] for e in entries] == ["[2001:db8::1]:443", "192.0.2.9:8883"]


def test_lists_are_capped_and_total_stays_true():
    built = report.build(1, listening_udp=[tcp(p) for p in range(1, 1001)], max_list_items=10)
    group = built["metrics"]["listening_udp_ports"]
    assert len(group["ports"]) == 10 and group["total"] == 1000


def test_encode_trims_until_under_the_size_limit():
    conns = [conn(f"198.51.100.{i % 250}", 1000 + i, interface="a-long-interface-name") for i in range(5000)]
    built = report.build(1, connections=conns, max_list_items=5000)
    payload = report.encode(built, "json", max_bytes=report.MAX_PAYLOAD_BYTES)
    assert len(payload) <= report.MAX_PAYLOAD_BYTES
    sent = json.loads(payload)["metrics"]["tcp_connections"]["established_connections"]
    assert sent["total"] == 5000 and 0 < len(sent["connections"]) < 5000


def test_negative_delta_is_refused():
    with pytest.raises(report.ReportError, match="negative"):
        report.build(1, network_stats={"bytes_in": -1})


def test_custom_metric_forms():
    built = report.build(1, custom_metrics={"temp": 21.5, "ports": [1, 2], "names": ["a"],
                                            "peers": {"ip_list": ["192.0.2.1"]}})
    assert built["custom_metrics"] == {"temp": [{"number": 21.5}], "ports": [{"number_list": [1, 2]}],
                                       "names": [{"string_list": ["a"]}], "peers": [{"ip_list": ["192.0.2.1"]}]}
    for bad in ({"aws:x": 1}, {"x": True}, {"x": float("nan")}, {"x": {"bogus": 1}}, {"x": [1, "a"]}):
        with pytest.raises(report.ReportError):
            report.build(1, custom_metrics=bad)


def test_a_report_needs_something_to_say():
    with pytest.raises(report.ReportError):
        report.build(1)
    with pytest.raises(report.ReportError):
        report.build(0, network_stats={})


def test_report_ids_increase_even_when_the_clock_steps_back():
    assert report.next_report_id(0, now_ms=1000) == 1000
    assert report.next_report_id(1000, now_ms=900) == 1001


def test_topic_and_unknown_format():
    assert report.topic("cam-1", "cbor") == "$aws/things/cam-1/defender/metrics/cbor"
    with pytest.raises(report.ReportError):
        report.topic("cam-1", "xml")
    with pytest.raises(report.ReportError):
        report.decode(b"\xff\x00", "json")


ports = st.lists(st.integers(0, 65535), max_size=40)
stats = st.fixed_dictionaries({k: st.integers(0, schema.MAX_INT) for k in schema.NETWORK_STATS_KEYS})


@settings(max_examples=150, deadline=None)
@given(tcp_ports=ports, udp_ports=ports, net=stats, rid=st.integers(1, schema.MAX_INT),
       fmt=st.sampled_from(report.FORMATS), short=st.booleans())
def test_every_report_round_trips_through_both_codecs(tcp_ports, udp_ports, net, rid, fmt, short):
    built = report.build(rid, listening_tcp=[tcp(p) for p in tcp_ports],
                         listening_udp=[tcp(p, "eth0") for p in udp_ports], network_stats=net)
    decoded = report.decode(report.encode(built, fmt, short), fmt)
    assert ("hed" in decoded) == short
    assert schema.to_long(decoded) == built
