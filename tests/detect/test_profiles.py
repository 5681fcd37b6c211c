"""Security profiles: AWS documents load unchanged; whatever AWS refuses is refused, clearly."""
import copy
import json
from pathlib import Path

import pytest

from garrison.detect.judge.metrics import spec_for
from garrison.detect.judge.profiles import CidrSet, ProfileError, load_profile

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "detect" / "ops" / "examples").glob("*.json"))


def _profile(*behaviors, **top):
    doc = {"securityProfileName": "p1", "behaviors": list(behaviors)}
    doc.update(top)
    return doc


def _rule(metric="aws:num-established-tcp-connections", op="less-than", value=None, name="b1", **criteria):
    crit = {"comparisonOperator": op, "value": value if value is not None else {"count": 50}}
    crit.update(criteria)
    return {"name": name, "metric": metric, "criteria": crit}


def _refused(doc, message):
    with pytest.raises(ProfileError) as info:
        load_profile(doc)
    assert message in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_profile_loads_and_round_trips(path):
    doc = json.loads(path.read_text())
    profile = load_profile(path)
    assert profile.name == doc["securityProfileName"]
    assert [b.name for b in profile.behaviors] == [b["name"] for b in doc["behaviors"]]
    assert profile.to_dict() == doc
    assert load_profile(profile.to_dict()).to_dict() == doc


def test_examples_cover_each_kind_of_behavior():
    kinds = {b.kind for path in EXAMPLES for b in load_profile(path).behaviors}
    assert {"rule", "statistical", "ml"} <= kinds


def test_file_url_as_given_to_cli_input_json(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_profile(_rule())))
    assert load_profile(f"file://{path}").name == "p1"
    assert load_profile(str(path)).behaviors[0].criterion == 50


def test_unreadable_or_bad_files_are_one_line_errors(tmp_path):
    _refused(tmp_path / "missing.json", "cannot read")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    _refused(bad, "is not valid JSON")
    bad.write_text("[1]")
    _refused(bad, "must hold a JSON object")


def test_parsed_behavior_fields():
    doc = _profile(
        _rule(name="conns", consecutiveDatapointsToAlarm=3, consecutiveDatapointsToClear=2),
        {"name": "ports", "metric": "aws:listening-tcp-ports", "suppressAlerts": True, "exportMetric": True,
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443, 22]}}},
        {"name": "dst", "metric": "aws:destination-ip-addresses",
         "criteria": {"comparisonOperator": "not-in-cidr-set", "value": {"cidrs": ["203.0.113.0/24"]}}},
        {"name": "bytes", "metric": "aws:all-bytes-out",
         "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"},
                      "durationSeconds": 900}},
        {"name": "ml", "metric": "aws:all-bytes-in", "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}}},
        {"name": "retain", "metric": "aws:num-listening-udp-ports"},
    )
    p = load_profile(doc)
    conns, ports, dst, stat, ml, retain = p.behaviors
    assert (conns.kind, conns.operator, conns.criterion, conns.consecutive_to_alarm,
            conns.consecutive_to_clear) == ("rule", "less-than", 50, 3, 2)
    assert ports.criterion == frozenset({22, 443}) and ports.suppress_alerts and ports.export_metric
    assert dst.criterion == CidrSet(["203.0.113.0/24"]) and dst.criterion.texts == ("203.0.113.0/24",)
    assert (stat.kind, stat.statistic, stat.duration_seconds, stat.criterion) == ("statistical", "p90", 900, None)
    assert (ml.kind, ml.confidence_level, ml.operator) == ("ml", "HIGH", None)
    assert retain.kind == "retain" and retain.consecutive_to_alarm == 1
    assert p.behavior("ml") is ml


def test_count_as_a_string_of_digits_like_cloudformation():
    assert load_profile(_profile(_rule(value={"count": "12"}))).behaviors[0].criterion == 12


def test_extras_are_kept():
    doc = _profile(_rule(metric="aws:num-authorization-failures"),
                   alertTargets={"SNS": {"alertTargetArn": "arn:x", "roleArn": "arn:y"}},
                   tags=[{"Key": "k", "Value": "v"}], additionalMetricsToRetainV2=[{"metric": "aws:num-disconnects"}],
                   securityProfileArn="arn:aws:iot:us-east-1:1:securityprofile/p1", version=3)
    doc["behaviors"][0]["metricDimension"] = {"dimensionName": "TopicFilterForAuthMessages", "operator": "NOT_IN"}
    p = load_profile(doc)
    assert p.alert_targets["SNS"]["roleArn"] == "arn:y"
    assert p.tags == [{"Key": "k", "Value": "v"}]
    assert p.additional_metrics == [{"metric": "aws:num-disconnects"}]
    assert p.behaviors[0].metric_dimension == {"dimensionName": "TopicFilterForAuthMessages", "operator": "NOT_IN"}
    assert p.to_dict() == doc


def test_to_dict_is_a_copy():
    doc = _profile(_rule())
    p = load_profile(doc)
    out = p.to_dict()
    out["behaviors"][0]["name"] = "changed"
    assert p.to_dict() == doc


def test_custom_metric_types_can_be_declared_for_valueless_behaviors():
    doc = _profile({"name": "ml", "metric": "temps", "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}})
    with pytest.raises(ProfileError, match="ML Detect supports only"):
        load_profile(doc, custom_metric_types={"temps": "number-list"})
    assert load_profile(doc, custom_metric_types={"temps": "number"}).behaviors[0].spec.value_type == "number"


# --- every refusal, with its message ---------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a" * 129, "has space", "slash/no", "ünïcode", None, 5])
def test_bad_profile_names(name):
    _refused({"securityProfileName": name}, "securityProfileName must be 1-128 characters of [a-zA-Z0-9:_-]")


def test_name_limits_accept_128_chars_and_the_full_alphabet():
    assert load_profile({"securityProfileName": "a" * 128}).name == "a" * 128
    assert load_profile(_profile(_rule(name="Az09:_-"))).behaviors[0].name == "Az09:_-"


@pytest.mark.parametrize("name", ["", "b" * 129, "b c", None])
def test_bad_behavior_names(name):
    _refused(_profile(_rule(name=name)), "behavior name must be 1-128 characters")


def test_description_too_long():
    _refused(_profile(securityProfileDescription="x" * 1001), "securityProfileDescription: must be a string of at most 1000")


def test_too_many_behaviors():
    behaviors = [_rule(name=f"b{i}") for i in range(101)]
    _refused(_profile(*behaviors), "behaviors: at most 100 behaviors per profile, got 101")
    assert len(load_profile(_profile(*behaviors[:100])).behaviors) == 100


def test_duplicate_behavior_names():
    err = _refused(_profile(_rule(), _rule()), "behavior 'b1': name: behavior names must be unique")
    assert err.behavior == "b1" and err.field == "name"


def test_behaviors_not_a_list_or_not_objects():
    _refused(_profile(behaviors={"a": 1}), "behaviors: must be a list")
    _refused(_profile("nope"), "each behavior must be an object")


def test_metric_required_and_known():
    _refused(_profile({"name": "b1"}), "behavior 'b1': metric: is required")
    _refused(_profile(_rule(metric="aws:cpu")), "behavior 'b1': metric: unknown metric 'aws:cpu'")
    _refused(_profile(_rule(metric="bad metric")), "metric must be 1-128 characters")


@pytest.mark.parametrize("metric, op, value", [
    ("aws:num-established-tcp-connections", "in-port-set", {"count": 1}),
    ("aws:all-bytes-out", "in-set", {"count": 1}),
    ("aws:listening-tcp-ports", "less-than", {"ports": [22]}),
    ("aws:listening-udp-ports", "in-cidr-set", {"ports": [53]}),
    ("aws:destination-ip-addresses", "in-port-set", {"cidrs": ["10.0.0.0/8"]}),
    ("aws:destination-ip-addresses", "greater-than", {"cidrs": ["10.0.0.0/8"]}),
    ("names", "in-port-set", {"strings": ["a"]}),
    ("nums", "less-than", {"numbers": [1]}),
    ("temp", "in-set", {"number": 1}),
    ("aws:num-established-tcp-connections", "equals", {"count": 1}),
])
def test_operator_must_suit_the_value_type(metric, op, value):
    _refused(_profile(_rule(metric=metric, op=op, value=value)), f"criteria.comparisonOperator: {op!r} does not apply")


@pytest.mark.parametrize("metric, value, message", [
    ("aws:num-established-tcp-connections", {"ports": [1]}, "takes a 'count' value, not 'ports'"),
    ("aws:num-established-tcp-connections", {"number": 1}, "takes a 'count' value, not 'number'"),
    ("aws:listening-tcp-ports", {"count": 1}, "takes a 'ports' value, not 'count'"),
    ("aws:num-established-tcp-connections", {"count": 1, "number": 2}, "must hold exactly one of"),
    ("aws:num-established-tcp-connections", {}, "must hold exactly one of"),
    ("aws:num-established-tcp-connections", {"counts": 1}, "unknown key 'counts'"),
    ("aws:num-established-tcp-connections", [1], "must be an object"),
    ("aws:num-established-tcp-connections", {"count": -1}, "count: must be a non-negative integer"),
    ("aws:num-established-tcp-connections", {"count": 1.5}, "count: must be a non-negative integer"),
    ("aws:num-established-tcp-connections", {"count": True}, "count: must be a non-negative integer"),
    ("aws:num-established-tcp-connections", {"count": "²"}, "count: must be a non-negative integer"),
    ("aws:num-established-tcp-connections", {"count": 2**63}, "count: must be a non-negative integer up to"),
    ("temp", {"number": float("nan")}, "number: must be a finite number"),
    ("aws:listening-tcp-ports", {"ports": [22, 65536]}, "ports[1]: 65536 is not a port (0-65535)"),
    ("aws:listening-tcp-ports", {"ports": [-1]}, "ports[0]: -1 is not a port"),
    ("aws:listening-tcp-ports", {"ports": ["22"]}, "ports[0]: '22' is not a port"),
    ("aws:listening-tcp-ports", {"ports": 22}, "ports: must be a list"),
    ("aws:destination-ip-addresses", {"cidrs": ["10.0.0.0/33"]}, "cidrs[0]: '10.0.0.0/33' is not a CIDR"),
    ("aws:destination-ip-addresses", {"cidrs": ["10.0.0.0/8", "example.com"]}, "cidrs[1]: 'example.com' is not a CIDR"),
    ("nums", {"numbers": [1, "2"]}, "numbers[1]: '2' is not a finite number"),
    ("names", {"strings": ["a", 2]}, "strings[1]: 2 is not a string"),
])
def test_values_are_checked(metric, value, message):
    op = spec_for(metric, {"value": value}).operators[0]  # the metric's own operator: only the value is wrong
    _refused(_profile(_rule(metric=metric, op=op, value=value)), message)


def test_operator_without_value_and_value_without_operator():
    _refused(_profile({"name": "b1", "metric": "aws:num-listening-tcp-ports",
                       "criteria": {"comparisonOperator": "less-than"}}),
             "behavior 'b1': criteria.value: is required with a comparisonOperator")
    _refused(_profile({"name": "b1", "metric": "aws:num-listening-tcp-ports", "criteria": {"value": {"count": 1}}}),
             "criteria.comparisonOperator: is required with a value")


@pytest.mark.parametrize("duration", [0, 60, 301, 7200, "300", 300.0])
def test_duration_must_be_one_of_the_allowed(duration):
    _refused(_profile(_rule(durationSeconds=duration)),
             "criteria.durationSeconds: must be one of 300, 600, 900, 1800, 3600")


@pytest.mark.parametrize("duration", [300, 600, 900, 1800, 3600])
def test_allowed_durations(duration):
    assert load_profile(_profile(_rule(durationSeconds=duration))).behaviors[0].duration_seconds == duration


@pytest.mark.parametrize("metric, op, value", [
    ("aws:listening-tcp-ports", "in-port-set", {"ports": [22]}),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}),
    ("names", "in-set", {"strings": ["a"]}),
])
def test_duration_only_on_numeric_metrics(metric, op, value):
    _refused(_profile(_rule(metric=metric, op=op, value=value, durationSeconds=300)),
             "criteria.durationSeconds: cannot be used with list metric")


@pytest.mark.parametrize("key", ["consecutiveDatapointsToAlarm", "consecutiveDatapointsToClear"])
@pytest.mark.parametrize("count", [0, 11, -1, 2.0, "3", True])
def test_consecutive_datapoints_range(key, count):
    _refused(_profile(_rule(**{key: count})), f"criteria.{key}: must be an integer from 1 to 10")


def test_consecutive_datapoints_bounds_accepted():
    b = load_profile(_profile(_rule(consecutiveDatapointsToAlarm=10, consecutiveDatapointsToClear=1))).behaviors[0]
    assert (b.consecutive_to_alarm, b.consecutive_to_clear) == (10, 1)


@pytest.mark.parametrize("statistic", ["p5", "p95", "P90", "90", "", None, "Median"])
def test_statistic_must_be_in_the_set(statistic):
    _refused(_profile({"name": "b1", "metric": "aws:all-bytes-out", "criteria": {
        "comparisonOperator": "less-than", "statisticalThreshold": {"statistic": statistic}}}),
        "criteria.statisticalThreshold: statistic must be one of p0, p0.1, p0.01")


@pytest.mark.parametrize("statistic", ["p0", "p0.1", "p0.01", "p1", "p10", "p50", "p90", "p99", "p99.9",
                                       "p99.99", "p100", "Average"])
def test_every_aws_statistic_is_accepted(statistic):
    doc = _profile({"name": "b1", "metric": "aws:all-bytes-out", "criteria": {
        "comparisonOperator": "less-than", "statisticalThreshold": {"statistic": statistic}, "durationSeconds": 300}})
    assert load_profile(doc).behaviors[0].statistic == statistic


def test_statistical_threshold_refusals():
    base = {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}}
    _refused(_profile({"name": "b1", "metric": "aws:all-bytes-out", "criteria": dict(base, value={"count": 1})}),
             "criteria.value: cannot be used with statisticalThreshold")
    _refused(_profile({"name": "b1", "metric": "aws:listening-tcp-ports",
                       "criteria": dict(base, comparisonOperator="in-port-set")}),
             "statistical thresholds need a numeric metric")
    _refused(_profile({"name": "b1", "metric": "aws:all-bytes-out",
                       "criteria": {"statisticalThreshold": {"statistic": "p90"}}}),
             "criteria.comparisonOperator: is required with statisticalThreshold")


@pytest.mark.parametrize("level", ["low", "EXTREME", None, ""])
def test_confidence_level_must_be_in_the_set(level):
    _refused(_profile({"name": "b1", "metric": "aws:all-bytes-out",
                       "criteria": {"mlDetectionConfig": {"confidenceLevel": level}}}),
             "criteria.mlDetectionConfig: confidenceLevel must be one of LOW, MEDIUM, HIGH")


@pytest.mark.parametrize("metric, extra", [
    ("aws:listening-tcp-ports", {}),
    ("aws:destination-ip-addresses", {}),
])
def test_ml_only_on_numeric_supported_metrics(metric, extra):
    _refused(_profile({"name": "b1", "metric": metric, "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}),
             "ML Detect supports only")


@pytest.mark.parametrize("key, value", [
    ("comparisonOperator", "less-than"), ("value", {"count": 1}), ("statisticalThreshold", {"statistic": "p90"})])
def test_ml_takes_no_operator_value_or_statistic(key, value):
    criteria = {"mlDetectionConfig": {"confidenceLevel": "LOW"}, key: value}
    _refused(_profile({"name": "b1", "metric": "aws:all-bytes-out", "criteria": criteria}),
             f"criteria.{key}: cannot be used with mlDetectionConfig")


def test_ml_on_custom_number_and_every_numeric_device_metric():
    metrics = ["aws:all-bytes-in", "aws:all-bytes-out", "aws:all-packets-in", "aws:all-packets-out",
               "aws:num-listening-tcp-ports", "aws:num-listening-udp-ports", "aws:num-established-tcp-connections",
               "cpu"]
    doc = _profile(*[{"name": f"b{i}", "metric": m, "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}
                     for i, m in enumerate(metrics)])
    assert all(b.kind == "ml" for b in load_profile(doc).behaviors)


def test_custom_metric_names_must_not_start_with_aws():
    _refused(_profile(_rule(metric="aws:my_cpu", value={"number": 1})), "unknown metric 'aws:my_cpu'")


def test_dimension_checks():
    b = _rule(metric="aws:num-listening-tcp-ports")
    b["metricDimension"] = {"dimensionName": "d", "operator": "MAYBE"}
    _refused(_profile(b), "metricDimension.operator: must be IN or NOT_IN")
    b["metricDimension"] = {"operator": "IN"}
    _refused(_profile(b), "behavior 'b1': metricDimension.dimensionName: is required")
    b["metricDimension"] = {"dimensionName": "has space"}
    _refused(_profile(b), "behavior 'b1': metricDimension.dimensionName: dimensionName must be 1-128 characters")
    c = _rule(metric="cpu", value={"number": 1})
    c["metricDimension"] = {"dimensionName": "d"}
    _refused(_profile(c), "metricDimension: dimensions cannot be used with custom metrics")
    b["metricDimension"] = {"dimensionName": "d"}   # AWS: message and authorization metrics only
    _refused(_profile(b), "metricDimension: dimensions apply only to aws:num-messages-sent")


def test_booleans_and_unknown_criteria_fields():
    b = _rule()
    b["suppressAlerts"] = "yes"
    _refused(_profile(b), "behavior 'b1': suppressAlerts: must be true or false")
    _refused(_profile(_rule(durationSecs=300)), "criteria.durationSecs: unknown criteria field")


def test_top_level_shapes():
    _refused(_profile(alertTargets=["sns"]), "alertTargets: must be an object")
    _refused(_profile(tags={"k": "v"}), "tags: must be a list")
    _refused(_profile(additionalMetricsToRetainV2=[{"metric": "aws:nope"}]),
             "additionalMetricsToRetainV2[0].metric: unknown metric")


def test_error_carries_behavior_and_field():
    err = _refused(_profile(_rule(name="ports", metric="aws:listening-tcp-ports", op="in-port-set",
                                  value={"ports": [70000]})), "behavior 'ports': criteria.value.ports[0]")
    assert (err.behavior, err.field) == ("ports", "criteria.value.ports[0]")


def test_load_does_not_modify_the_given_document():
    doc = _profile(_rule(), _rule(name="b2", metric="aws:listening-tcp-ports", op="in-port-set", value={"ports": [1]}))
    before = copy.deepcopy(doc)
    load_profile(doc)
    assert doc == before


# --- hostile documents: a ProfileError or a profile, never anything else --------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
_keys = st.sampled_from(["comparisonOperator", "value", "durationSeconds", "consecutiveDatapointsToAlarm",
                         "consecutiveDatapointsToClear", "statisticalThreshold", "mlDetectionConfig"])
_metric = st.sampled_from(["aws:listening-tcp-ports", "aws:all-bytes-out", "aws:destination-ip-addresses",
                           "aws:num-established-tcp-connections", "custom", "aws:", ""]) | st.text(max_size=6)
_behavior = st.fixed_dictionaries({"name": st.sampled_from(["b", "c"]) | _json, "metric": _metric},
                                  optional={"criteria": st.dictionaries(_keys, _json, max_size=4) | _json,
                                            "suppressAlerts": _json, "metricDimension": _json})


@settings(max_examples=400, deadline=None)
@given(st.lists(_behavior, max_size=3) | _json, _json)
def test_hostile_profiles_only_ever_raise_profile_error(behaviors, extra):
    for doc in ({"securityProfileName": "p", "behaviors": behaviors}, extra):
        try:
            profile = load_profile(doc)
        except ProfileError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert load_profile(profile.to_dict()).to_dict() == profile.to_dict()
