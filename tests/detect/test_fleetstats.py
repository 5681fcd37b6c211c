"""Fleet percentiles: the interpolation method on known data (the population rules are the
engine's: tests/detect/test_engine.py)."""
import random

import pytest

from garrison.detect.judge.fleetstats import percentile


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
