"""Fleet percentiles: the interpolation method on known data, the window's population rules."""
import json
import random

import pytest

from garrison.detect.judge.fleetstats import FleetStats, FleetWindow, percentile

T0 = 1_700_000_000_000
S = 1000


@pytest.mark.parametrize("statistic, expected", [
    ("p0", 1.0), ("p10", 1.9), ("p50", 5.5), ("p90", 9.1), ("p99", 9.91), ("p99.9", 9.991),
    ("p99.99", 9.9991), ("p100", 10.0), ("p1", 1.09), ("p0.1", 1.009), ("p0.01", 1.0009), ("Average", 5.5),
])
def test_linear_interpolation_on_one_to_ten(statistic, expected):
    assert percentile(range(10, 0, -1), statistic) == pytest.approx(expected)


def test_matches_the_textbook_type_7_definition():
    rng = random.Random(7)
    data = [rng.uniform(0, 1000) for _ in range(101)]
    ordered = sorted(data)
    # with 101 values, p-th percentile for integer p is exactly the p-th order statistic
    for p in (0, 1, 10, 50, 90, 99, 100):
        assert percentile(data, f"p{p}") == ordered[p]


def test_single_value_and_errors():
    assert percentile([42], "p99.99") == 42
    with pytest.raises(ValueError, match="no values"):
        percentile([], "p50")
    for bad in ("p101", "median", "pX", "50"):
        with pytest.raises(ValueError):
            percentile([1, 2], bad)


def test_no_threshold_below_the_minimum_device_count():
    window = FleetWindow(300, min_devices=5)
    for i in range(4):
        window.add(f"thing-{i}", i * 10, T0)
    assert window.threshold(T0, "p50") is None
    window.add("thing-4", 40, T0)
    assert window.threshold(T0, "p50") == 20
    assert window.threshold(T0, "p50", min_devices=6) is None
    assert window.threshold(T0, "p50", min_devices=1) == 20


def test_each_device_counts_once_with_its_latest_value():
    window = FleetWindow(300, min_devices=1)
    window.add("a", 100, T0)
    window.add("a", 1, T0 + S)
    window.add("b", 3, T0 + S)
    assert window.population(T0 + S) == 2
    assert window.threshold(T0 + S, "p100") == 3
    assert window.threshold(T0 + S, "p0") == 1


def test_devices_silent_for_the_duration_leave_the_population():
    window = FleetWindow(300, min_devices=1)
    window.add("old", 1000, T0)
    window.add("new", 10, T0 + 200 * S)
    assert window.threshold(T0 + 299 * S, "p100") == 1000
    assert window.threshold(T0 + 300 * S, "p100") == 10   # exactly 300 s old: out
    assert window.population(T0 + 600 * S) == 0
    assert window.threshold(T0 + 600 * S, "p50") is None


def test_out_of_order_timestamps_keep_expiry_right():
    window = FleetWindow(300, min_devices=1)
    window.add("a", 1, T0 + 100 * S)
    window.add("b", 2, T0 + 10 * S)    # an older timestamp arrives late
    window.add("c", 3, T0 + 200 * S)
    assert window.population(T0 + 320 * S) == 2       # b (10 s) expired, a and c stay
    assert window.threshold(T0 + 320 * S, "p0") == 1


def test_forget_and_duplicate_values():
    window = FleetWindow(600, min_devices=1)
    for thing in "abc":
        window.add(thing, 5, T0)
    window.forget("b")
    window.forget("nobody")
    assert window.population(T0) == 2 and window.threshold(T0, "Average") == 5


def test_round_trips_through_json():
    window = FleetWindow(900, min_devices=3)
    for i in range(10):
        window.add(f"t{i}", i * i, T0 + i * S)
    again = FleetWindow.from_dict(json.loads(json.dumps(window.to_dict())))
    assert again.duration_ms == 900 * S and again.min_devices == 3
    assert again.threshold(T0 + 10 * S, "p90") == window.threshold(T0 + 10 * S, "p90")


def test_large_fleet_matches_the_plain_percentile():
    rng = random.Random(1)
    window = FleetWindow(300, min_devices=5)
    latest = {}
    for i in range(5000):
        thing, value = f"t{rng.randrange(800)}", rng.randrange(10**6)
        window.add(thing, value, T0 + i)
        latest[thing] = value
    assert window.threshold(T0 + 5000, "p99") == percentile(latest.values(), "p99")


def test_default_duration_is_300_seconds():
    assert FleetWindow(None).duration_ms == 300 * S


def test_fleetstats_keys_windows_by_profile_and_behavior():
    stats = FleetStats(min_devices=2)
    w = stats.window("p", "b", 900)
    assert stats.window("p", "b", 900) is w and w.min_devices == 2
    assert stats.window("p", "other", 900) is not w
    assert stats.window("p", "b", 300) is not w        # a changed duration starts afresh
    stats.drop_profile("p")
    assert stats.window("p", "b", 300) is not w
