"""Fleet percentiles for statistical-threshold behaviors (the engine's recompute_fleet_stats
takes the population from the store and asks `percentile` for the threshold).

AWS: "Metrics are collected over the specified period (durationSeconds) from all reporting
devices and statistical ranks are calculated." Here the population of a (profile, behavior) is
every device under the profile that reported a datapoint within the last `durationSeconds`
(300 s when the behavior names none), each counted once with its latest judged value (for delta
metrics the sum over its window, as garrison.detect.judge.evaluate computes it). Below the engine
config's `fleet_min_devices` devices (default 5) there is no threshold: a percentile of two
devices says nothing about a fleet.

Percentiles use linear interpolation between closest ranks (numpy's default, Hyndman & Fan
type 7): for sorted values x[0..n-1] and p in [0, 100], rank h = (n - 1) * p / 100 and the
result is x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]). So p0 is the minimum,
p100 the maximum, p50 the median. "Average" (also in AWS's enum) is the arithmetic mean.
"""

import math
from typing import Iterable, List

DEFAULT_DURATION_SECONDS = 300


def percentile(values: Iterable[float], statistic: str) -> float:
    """The `statistic` ("p0".."p100", e.g. "p99.9", or "Average") of `values`."""
    data = sorted(values)
    return _percentile_sorted(data, statistic)


def _percentile_sorted(data: List[float], statistic: str) -> float:
    if not data:
        raise ValueError("percentile of no values")
    if statistic == "Average":
        return math.fsum(data) / len(data)
    if not (isinstance(statistic, str) and statistic.startswith("p")):
        raise ValueError(f"unknown statistic {statistic!r} (p0..p100 or Average)")
    try:
        p = float(statistic[1:])
    except ValueError:
        raise ValueError(f"unknown statistic {statistic!r} (p0..p100 or Average)") from None
    if not 0 <= p <= 100:
        raise ValueError(f"statistic {statistic!r} is outside p0..p100")
    rank = (len(data) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (rank - low) * (data[high] - data[low])
