"""Evaluation: AWS semantics for every operator, windows, consecutive datapoints, thresholds, ML verdicts."""
import json

import pytest

from garrison.detect.judge.evaluate import ALARM_CLEARED, IN_ALARM, new_state, step, violation_value
from garrison.detect.judge.metrics import spec_for
from garrison.detect.judge.profiles import load_profile

T0 = 1_700_000_000_000
MIN = 60_000


def behavior(metric, op=None, value=None, **criteria):
    crit = dict(criteria)
    if op is not None:
        crit["comparisonOperator"] = op
    if value is not None:
        crit["value"] = value
    doc = {"name": "b", "metric": metric}
    if crit:
        doc["criteria"] = crit
    return load_profile({"securityProfileName": "p", "behaviors": [doc]}).behaviors[0]


def verdict(b, value):
    return step(b, None, value, T0).violating


CONNS = "aws:num-established-tcp-connections"


@pytest.mark.parametrize("metric, key", [(CONNS, "count"), ("temperature", "number")])
@pytest.mark.parametrize("op, conforming, violating", [
    ("less-than", [0, 49], [50, 51]),
    ("less-than-equals", [49, 50], [51, 1000]),
    ("greater-than", [51, 10**12], [50, 0]),
    ("greater-than-equals", [50, 51], [49, 0]),
])
def test_numeric_operators_both_sides_of_the_boundary(metric, key, op, conforming, violating):
    b = behavior(metric, op, {key: 50})
    assert [verdict(b, v) for v in conforming] == [False] * len(conforming)
    assert [verdict(b, v) for v in violating] == [True] * len(violating)


def test_number_operators_with_floats():
    b = behavior("temperature", "less-than", {"number": 71.5})
    assert verdict(b, 71.49) is False and verdict(b, 71.5) is True


@pytest.mark.parametrize("metric", ["aws:listening-tcp-ports", "aws:listening-udp-ports"])
def test_in_port_set_is_an_allow_list(metric):
    b = behavior(metric, "in-port-set", {"ports": [22, 443]})
    assert verdict(b, [22]) is False
    assert verdict(b, [22, 443]) is False
    assert verdict(b, [22, 8080]) is True
    assert verdict(b, [23]) is True


@pytest.mark.parametrize("metric", ["aws:listening-tcp-ports", "aws:listening-udp-ports"])
def test_not_in_port_set_is_a_deny_list(metric):
    b = behavior(metric, "not-in-port-set", {"ports": [23, 5900]})
    assert verdict(b, [22, 80]) is False
    assert verdict(b, [22, 23]) is True
    assert verdict(b, [5900]) is True


def test_in_cidr_set_every_destination_inside():
    b = behavior("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8", "2001:db8::/32"]})
    assert verdict(b, ["10.0.0.1", "10.255.255.255", "2001:db8::5"]) is False
    assert verdict(b, ["10.0.0.1", "11.0.0.0"]) is True       # just past the network
    assert verdict(b, ["9.255.255.255"]) is True
    assert verdict(b, ["2001:db9::1"]) is True
    assert verdict(b, ["::ffff:10.0.0.1"]) is True            # an IPv6 address is not in an IPv4 network


def test_not_in_cidr_set_is_a_deny_list():
    b = behavior("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["203.0.113.0/24", "198.51.100.7"]})
    assert verdict(b, ["192.0.2.1", "203.0.112.255", "203.0.114.0", "198.51.100.8"]) is False
    assert verdict(b, ["192.0.2.1", "203.0.113.0"]) is True
    assert verdict(b, ["203.0.113.255"]) is True
    assert verdict(b, ["198.51.100.7"]) is True               # a bare address is a /32


def test_cidr_operators_on_custom_ip_lists_with_networks():
    b = behavior("peers", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]})
    assert verdict(b, ["10.1.0.0/16"]) is False
    assert verdict(b, ["10.0.0.0/7"]) is True                 # wider than the allowed network
    assert verdict(b, ["not-an-ip"]) is True                  # unparsable is not inside anything
    deny = behavior("peers", "not-in-cidr-set", {"cidrs": ["10.0.0.0/8"]})
    assert verdict(deny, ["not-an-ip", "192.168.1.1"]) is False


@pytest.mark.parametrize("key, allowed, inside, outside", [
    ("numbers", [1, 2.5], [1, 2.5, 1.0], [1, 3]),
    ("strings", ["1.4.2", "1.5.0"], ["1.5.0"], ["1.5.0", "1.5.1"]),
])
def test_in_set_and_not_in_set(key, allowed, inside, outside):
    allow = behavior("m", "in-set", {key: allowed})
    assert verdict(allow, inside) is False and verdict(allow, outside) is True
    deny = behavior("m", "not-in-set", {key: allowed})
    assert verdict(deny, [x for x in outside if x not in allowed]) is False
    assert verdict(deny, outside) is True


@pytest.mark.parametrize("metric, op, value", [
    ("aws:listening-tcp-ports", "in-port-set", {"ports": [22]}),
    ("aws:listening-tcp-ports", "not-in-port-set", {"ports": [22]}),
    ("aws:destination-ip-addresses", "in-cidr-set", {"cidrs": ["10.0.0.0/8"]}),
    ("aws:destination-ip-addresses", "not-in-cidr-set", {"cidrs": ["0.0.0.0/0"]}),
    ("m", "in-set", {"strings": ["a"]}),
    ("m", "not-in-set", {"numbers": [1]}),
])
def test_an_empty_list_conforms_and_clears_at_once(metric, op, value):
    b = behavior(metric, op, value, consecutiveDatapointsToClear=5)
    bad = {"ports": [9999] if op == "in-port-set" else [22], "cidrs": ["11.0.0.1"] if op == "in-cidr-set" else ["1.1.1.1"],
           "strings": ["b"], "numbers": [1]}[next(iter(value))]
    out = step(b, None, bad, T0)
    assert (out.violating, out.transition) == (True, IN_ALARM)
    out = step(b, out.state, [], T0 + MIN)
    assert (out.violating, out.transition) == (False, ALARM_CLEARED)   # not after 5: at once
    assert out.state["alarm"] is False


def test_no_datapoint_changes_nothing():
    b = behavior(CONNS, "less-than", {"count": 5})
    state = step(b, None, 10, T0).state
    out = step(b, state, None, T0 + MIN)
    assert out == (state, None, None, None, {})


def test_consecutive_datapoints_to_alarm_and_to_clear():
    b = behavior(CONNS, "less-than", {"count": 5}, consecutiveDatapointsToAlarm=3, consecutiveDatapointsToClear=2)
    values = [9, 9, 1, 9, 9, 9, 9, 1, 9, 1, 1, 1]
    expected = [None, None, None, None, None, IN_ALARM, None, None, None, None, ALARM_CLEARED, None]
    state, got, alarms = None, [], []
    for i, v in enumerate(values):
        out = step(b, state, v, T0 + i * MIN)
        state = out.state
        got.append(out.transition)
        alarms.append(state["alarm"])
    assert got == expected
    assert alarms == [False] * 5 + [True] * 5 + [False] * 2


def test_default_consecutive_is_one():
    b = behavior(CONNS, "less-than", {"count": 5})
    a = step(b, None, 5, T0)
    assert a.transition == IN_ALARM
    c = step(b, a.state, 4, T0 + MIN)
    assert c.transition == ALARM_CLEARED
    assert step(b, c.state, 4, T0 + 2 * MIN).transition is None


def test_alarm_raised_once_while_violating():
    b = behavior(CONNS, "less-than", {"count": 5})
    state, transitions = None, []
    for i in range(4):
        out = step(b, state, 99, T0 + i * MIN)
        state, _ = out.state, transitions.append(out.transition)
    assert transitions == [IN_ALARM, None, None, None]


def test_delta_metrics_are_summed_over_the_duration_and_pruned():
    b = behavior("aws:all-bytes-out", "less-than", {"count": 1000}, durationSeconds=600)
    state = None
    judged = []
    # reports every 5 minutes: the 600 s window holds the last two (start is exclusive)
    for i, v in enumerate([400, 500, 600, 100, 100]):
        out = step(b, state, v, T0 + i * 5 * MIN)
        state = out.state
        judged.append((out.value, out.violating))
    assert judged == [(400, False), (900, False), (1100, True), (700, False), (200, False)]
    assert state["window"] == [[T0 + 15 * MIN, 100], [T0 + 20 * MIN, 100]]
    assert out.detail["window"] == {"start_ms": T0 + 10 * MIN, "end_ms": T0 + 20 * MIN, "datapoints": 2}


def test_a_long_silence_empties_the_window():
    b = behavior("aws:all-packets-in", "less-than", {"count": 100}, durationSeconds=300)
    state = step(b, None, 90, T0).state
    out = step(b, state, 50, T0 + 60 * MIN)
    assert out.value == 50 and out.state["window"] == [[T0 + 60 * MIN, 50]]


def test_delta_metric_without_duration_judges_each_report():
    b = behavior("aws:all-bytes-in", "less-than", {"count": 1000})
    state = step(b, None, 900, T0).state
    out = step(b, state, 900, T0 + 5 * MIN)
    assert (out.value, out.violating) == (900, False) and "window" not in out.state


def test_gauges_with_a_duration_judge_the_latest_value():
    b = behavior(CONNS, "less-than", {"count": 10}, durationSeconds=300)
    state = step(b, None, 6, T0).state
    out = step(b, state, 6, T0 + MIN)
    assert (out.value, out.violating) == (6, False)


def test_statistical_threshold_uses_the_given_threshold():
    b = behavior("aws:all-bytes-out", "less-than-equals", None, statisticalThreshold={"statistic": "p90"},
                 durationSeconds=300)
    out = step(b, None, 1000, T0, threshold=1000.0)
    assert (out.violating, out.detail["threshold"], out.detail["statistic"]) == (False, 1000.0, "p90")
    out = step(b, out.state, 1001, T0 + 5 * MIN, threshold=1000.0)
    assert (out.violating, out.transition) == (True, IN_ALARM)


def test_statistical_without_threshold_gives_no_verdict_but_the_judged_value():
    b = behavior("aws:all-bytes-out", "less-than-equals", None, statisticalThreshold={"statistic": "p90"},
                 durationSeconds=600)
    first = step(b, None, 10**9, T0, threshold=1.0)
    assert first.state["alarm"] is True
    out = step(b, first.state, 5, T0 + 5 * MIN, threshold=None)
    assert (out.violating, out.transition) == (None, None)
    assert out.value == 10**9 + 5                                         # still summed, for the fleet window
    assert (out.state["alarm"], out.state["violating"]) == (True, 1)      # counters untouched


@pytest.mark.parametrize("metric", ["aws:all-bytes-in", "cpu"])
def test_ml_verdict_passes_through_consecutive_logic(metric):
    b = behavior(metric, None, None, mlDetectionConfig={"confidenceLevel": "HIGH"}, consecutiveDatapointsToAlarm=2)
    out = step(b, None, 5, T0)                        # no model yet: no verdict
    assert (out.violating, out.transition, out.value) == (None, None, 5)
    out = step(b, out.state, 5, T0, verdict=True)
    assert (out.violating, out.transition, out.detail["verdict"]) == (True, None, True)
    out = step(b, out.state, 5, T0 + MIN, verdict=True)
    assert (out.violating, out.transition) == (True, IN_ALARM)
    out = step(b, out.state, 5, T0 + 2 * MIN, verdict=False)
    assert (out.violating, out.transition) == (False, ALARM_CLEARED)


def test_verdict_overrides_a_rule():
    b = behavior(CONNS, "less-than", {"count": 5})
    assert step(b, None, 1, T0, verdict=True).violating is True


def test_retain_only_behavior_never_judges():
    b = behavior(CONNS)
    out = step(b, None, 1000, T0)
    assert (out.violating, out.transition, out.value) == (None, None, 1000)


def test_state_is_json_and_input_state_is_not_modified():
    b = behavior("aws:all-bytes-out", "less-than", {"count": 10}, durationSeconds=300)
    state = step(b, new_state(), 50, T0).state
    before = json.dumps(state)
    out = step(b, json.loads(before), 1, T0 + MIN)
    assert json.dumps(state) == before
    assert json.loads(json.dumps(out.state)) == out.state


@pytest.mark.parametrize("metric, value, expected", [
    (CONNS, 7, {"count": 7}),
    ("aws:all-bytes-out", 10**12, {"count": 10**12}),
    ("aws:listening-tcp-ports", [443, 22], {"ports": [22, 443]}),
    ("aws:destination-ip-addresses", ["10.0.0.2", "10.0.0.1"], {"cidrs": ["10.0.0.1", "10.0.0.2"]}),
])
def test_violation_value_shapes(metric, value, expected):
    assert violation_value(spec_for(metric), value) == expected


def test_violation_value_custom_shapes():
    assert violation_value(spec_for("m", {"value": {"number": 1}}), 2.5) == {"number": 2.5}
    assert violation_value(spec_for("m", {"value": {"numbers": [1]}}), [3, 1]) == {"numbers": [3, 1]}
    assert violation_value(spec_for("m", {"value": {"strings": ["a"]}}), ["b"]) == {"strings": ["b"]}
    assert violation_value(spec_for("m"), None) is None


# --- CIDR matching against the standard library, on generated addresses ---------------------

from hypothesis import given, settings, strategies as st  # noqa: E402
import ipaddress  # noqa: E402

from garrison.detect.judge.profiles import CidrSet  # noqa: E402

_v4_nets = st.builds(lambda a, p: str(ipaddress.ip_network((a, p), strict=False)),
                     st.integers(0, 2**32 - 1), st.integers(0, 32))
_v6_nets = st.builds(lambda a, p: str(ipaddress.ip_network((a, p), strict=False)),
                     st.integers(0, 2**128 - 1), st.integers(0, 128))
_v4 = st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a)))
_v6 = st.integers(0, 2**128 - 1).map(lambda a: str(ipaddress.IPv6Address(a)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_v4_nets, _v6_nets), min_size=1, max_size=6),
       st.lists(st.one_of(_v4, _v6), min_size=1, max_size=6), st.data())
def test_cidr_set_agrees_with_ipaddress(nets, addresses, data):
    # also probe addresses at the edges of each network, where off-by-one errors live
    for net in map(ipaddress.ip_network, nets):
        addresses.append(str(net.network_address))
        addresses.append(str(net.broadcast_address))
        edge = int(net.broadcast_address) + 1
        if edge < 2 ** net.max_prefixlen:
            addresses.append(str(ipaddress.ip_address(edge) if net.version == 4 else ipaddress.IPv6Address(edge)))
    cidrs = CidrSet(nets)
    parsed = [ipaddress.ip_network(n) for n in nets]
    for text in addresses:
        ip = ipaddress.ip_address(text)
        assert cidrs.contains(text) == any(ip.version == n.version and ip in n for n in parsed), (text, nets)
