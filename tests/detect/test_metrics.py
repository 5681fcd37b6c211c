"""The metric catalogue: each device metric's type, operators and extraction from real reports."""
import json

import pytest

from garrison.agent import report
from garrison.wire import schema
from garrison.collectors.base import Connection, ListeningSocket
from garrison.detect.judge import metrics
from garrison.detect.judge.metrics import CATALOGUE, MetricError, extract, spec_for


def _long(aws_reports, name):
    return schema.to_long(json.loads((aws_reports / name).read_text()))


def test_catalogue_holds_the_ten_device_metrics_with_their_types():
    assert {m: (s.value_type, s.delta) for m, s in CATALOGUE.items()} == {
        "aws:all-bytes-in": ("count", True), "aws:all-bytes-out": ("count", True),
        "aws:all-packets-in": ("count", True), "aws:all-packets-out": ("count", True),
        "aws:listening-tcp-ports": ("ports", False), "aws:listening-udp-ports": ("ports", False),
        "aws:num-listening-tcp-ports": ("count", False), "aws:num-listening-udp-ports": ("count", False),
        "aws:num-established-tcp-connections": ("count", False),
        "aws:destination-ip-addresses": ("cidrs", False),
    }


def test_operators_per_value_type_are_exactly_the_documented_ones():
    numeric = ("less-than", "less-than-equals", "greater-than", "greater-than-equals")
    assert metrics.OPERATORS == {
        "count": numeric, "number": numeric, "ports": ("in-port-set", "not-in-port-set"),
        "cidrs": ("in-cidr-set", "not-in-cidr-set"), "numbers": ("in-set", "not-in-set"),
        "strings": ("in-set", "not-in-set")}
    assert spec_for("aws:listening-udp-ports").operators == ("in-port-set", "not-in-port-set")


def test_extracts_every_device_metric_from_the_aws_documentation_example(aws_reports):
    doc = _long(aws_reports, "aws-docs-example-long.json")
    got = {m: extract(doc, m, s) for m, s in CATALOGUE.items()}
    assert got == {
        "aws:all-bytes-in": 29358693495, "aws:all-bytes-out": 26485035,
        "aws:all-packets-in": 10013573555, "aws:all-packets-out": 11382615,
        "aws:listening-tcp-ports": [22, 53, 24800], "aws:listening-udp-ports": [67, 5353],
        "aws:num-listening-tcp-ports": 3, "aws:num-listening-udp-ports": 2,
        "aws:num-established-tcp-connections": 2,
        "aws:destination-ip-addresses": ["192.168.0.1"],  # the duplicate connection counts once
    }


def test_mixed_dialect_sample_agent_report_extracts(aws_reports):
    doc = _long(aws_reports, "aws-sample-agent-2.0.0-short.json")
    ports = extract(doc, "aws:listening-tcp-ports", CATALOGUE["aws:listening-tcp-ports"])
    assert ports and all(isinstance(p, int) for p in ports)
    assert extract(doc, "aws:num-listening-tcp-ports") == doc["metrics"]["listening_tcp_ports"]["total"]


def test_counts_use_total_not_the_capped_list_length():
    conns = [Connection(4, "10.0.0.100", 40000 + i, f"10.0.0.{i}", 443, interface="eth0")
             for i in range(10)]
    doc = report.build(1, connections=conns, max_list_items=3)
    assert extract(doc, "aws:num-established-tcp-connections") == 10
    assert extract(doc, "aws:destination-ip-addresses") == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]


def test_count_falls_back_to_list_length_without_total():
    doc = {"metrics": {"listening_tcp_ports": {"ports": [{"port": 22}, {"port": 80}]}}}
    assert extract(doc, "aws:num-listening-tcp-ports") == 2


def test_absent_groups_give_no_datapoint_not_zero():
    doc = report.build(1, listening_tcp=[ListeningSocket("tcp", 4, "0.0.0.0", 22)])
    for metric_id in ("aws:all-bytes-in", "aws:listening-udp-ports", "aws:num-established-tcp-connections",
                      "aws:destination-ip-addresses", "aws:num-listening-udp-ports"):
        assert extract(doc, metric_id) is None, metric_id
    assert extract(doc, "aws:listening-tcp-ports") == [22]


def test_empty_groups_give_empty_values():
    doc = report.build(1, listening_tcp=[], connections=[])
    assert extract(doc, "aws:listening-tcp-ports") == []
    assert extract(doc, "aws:num-listening-tcp-ports") == 0
    assert extract(doc, "aws:destination-ip-addresses") == []


def test_ipv6_and_ipv4_destinations():
    doc = {"metrics": {"tcp_connections": {"established_connections": {"connections": [
        {"remote_addr": "[2001:db8::1]:443"}, {"remote_addr": "198.51.100.7:8883"},
        {"remote_addr": "[2001:db8:0::1]:80"}, {"remote_addr": ""}], "total": 4}}}}
    assert extract(doc, "aws:destination-ip-addresses") == ["198.51.100.7", "2001:db8::1"]


def test_remote_ip_parsing():
    assert metrics.remote_ip("[::1]:22") == "::1"
    assert metrics.remote_ip("10.1.2.3:5") == "10.1.2.3"
    assert metrics.remote_ip("10.1.2.3") == "10.1.2.3"
    assert metrics.remote_ip("[2001:DB8:0::1]:22") == "2001:db8::1"
    assert metrics.remote_ip("") is None
    assert metrics.remote_ip(None) is None


def test_network_stats_zero_on_first_report_is_a_datapoint():
    doc = report.build(1, network_stats={})
    assert extract(doc, "aws:all-bytes-out") == 0


@pytest.mark.parametrize("criteria, value_type", [
    ({"comparisonOperator": "less-than", "value": {"number": 3}}, "number"),
    ({"comparisonOperator": "in-set", "value": {"numbers": [1]}}, "numbers"),
    ({"comparisonOperator": "in-set", "value": {"strings": ["a"]}}, "strings"),
    ({"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}}, "cidrs"),
    ({"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}}, "number"),
    (None, "number"),
])
def test_custom_metric_type_from_criteria(criteria, value_type):
    spec = spec_for("my_metric", criteria)
    assert spec.custom and spec.value_type == value_type and not spec.delta


def test_custom_metric_type_from_declared_type_wins():
    assert spec_for("m", None, declared_type="ip-address-list").value_type == "cidrs"
    assert spec_for("m", None, declared_type="string-list").value_type == "strings"
    assert spec_for("m", None, declared_type="number_list").value_type == "numbers"
    with pytest.raises(MetricError, match="unknown custom metric type"):
        spec_for("m", None, declared_type="blob")


def test_custom_metrics_extract_from_the_aws_documentation_example(aws_reports):
    doc = _long(aws_reports, "aws-docs-example-long.json")
    assert extract(doc, "MyMetricOfType_Number", spec_for("MyMetricOfType_Number")) == 1
    assert extract(doc, "x", spec_for("MyMetricOfType_NumberList", declared_type="number-list")) == [1, 2, 3]
    assert extract(doc, "x", spec_for("MyMetricOfType_StringList", declared_type="string-list")) == \
        ["value_1", "value_2"]
    assert extract(doc, "x", spec_for("MyMetricOfType_IpList", declared_type="ip-address-list")) == \
        ["172.0.0.0", "172.0.0.10"]


def test_custom_metric_of_another_type_or_absent_is_no_datapoint(aws_reports):
    doc = _long(aws_reports, "aws-docs-example-long.json")
    assert spec_for("MyMetricOfType_NumberList").extract(doc) is None  # expects number
    assert spec_for("missing").extract(doc) is None
    assert spec_for("m").extract({"custom_metrics": {"m": [{"number": True}]}}) is None


def test_unknown_aws_metric_is_refused_and_cloud_metrics_resolve():
    with pytest.raises(MetricError, match="unknown metric 'aws:nope'"):
        spec_for("aws:nope")
    cloud = spec_for("aws:num-messages-sent")
    assert cloud.value_type == "count" and cloud.extract({"metrics": {}}) is None
    assert spec_for("aws:source-ip-address").value_type == "cidrs"


def test_ml_metrics_are_the_seven_numeric_device_metrics():
    assert sorted(metrics.ML_METRICS) == sorted([
        "aws:all-bytes-in", "aws:all-bytes-out", "aws:all-packets-in", "aws:all-packets-out",
        "aws:num-listening-tcp-ports", "aws:num-listening-udp-ports", "aws:num-established-tcp-connections"])
