"""Fleet percentiles for statistical-threshold behaviors.

AWS: "Metrics are collected over the specified period (durationSeconds) from all reporting
devices and statistical ranks are calculated." Here the population of a (profile, behavior) is
every device under the profile that reported a datapoint within the last `durationSeconds`
(300 s when the behavior names none), each counted once with its latest judged value (for delta
metrics the sum over its window, as garrison.detect.judge.evaluate computes it). Below `min_devices` devices
(default 5) there is no threshold: a percentile of two devices says nothing about a fleet.

Percentiles use linear interpolation between closest ranks (numpy's default, Hyndman & Fan
type 7): for sorted values x[0..n-1] and p in [0, 100], rank h = (n - 1) * p / 100 and the
result is x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]). So p0 is the minimum,
p100 the maximum, p50 the median. "Average" (also in AWS's enum) is the arithmetic mean.
"""
import bisect
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

DEFAULT_MIN_DEVICES = 5
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


class FleetWindow:
    """Each device's latest value for one (profile, behavior), within a sliding time window.

    `add` and expiry are O(log n) plus a list shift; `threshold` is O(1) on the kept sorted list,
    so a 10,000-device fleet costs microseconds per report.
    """

    def __init__(self, duration_seconds: Optional[int] = None, min_devices: int = DEFAULT_MIN_DEVICES):
        self.duration_ms = (duration_seconds or DEFAULT_DURATION_SECONDS) * 1000
        self.min_devices = min_devices
        self._latest: Dict[str, Tuple[int, float]] = {}   # thing -> (received_ms, value), oldest first
        self._sorted: List[float] = []
        self._newest_ms = 0

    def add(self, thing: str, value: float, received_ms: int) -> None:
        """Record `thing`'s latest value (replacing its previous one)."""
        previous = self._latest.pop(thing, None)
        if previous is not None:
            self._remove_value(previous[1])
        if previous is not None and previous[0] > received_ms:
            received_ms = previous[0]  # never move a device back in time
        self._latest[thing] = (received_ms, value)
        bisect.insort(self._sorted, value)
        if received_ms < self._newest_ms:
            # an out-of-order timestamp (rare): keep the dict ordered by time for `expire`
            self._latest = dict(sorted(self._latest.items(), key=lambda item: item[1][0]))
        self._newest_ms = max(self._newest_ms, received_ms)

    def forget(self, thing: str) -> None:
        previous = self._latest.pop(thing, None)
        if previous is not None:
            self._remove_value(previous[1])

    def _remove_value(self, value: float) -> None:
        index = bisect.bisect_left(self._sorted, value)
        del self._sorted[index]

    def expire(self, now_ms: int) -> None:
        """Drop devices whose latest datapoint is older than the window."""
        start = now_ms - self.duration_ms
        while self._latest:
            thing, (received_ms, value) = next(iter(self._latest.items()))
            if received_ms > start:
                break
            del self._latest[thing]
            self._remove_value(value)

    def population(self, now_ms: int) -> int:
        self.expire(now_ms)
        return len(self._sorted)

    def threshold(self, now_ms: int, statistic: str, min_devices: Optional[int] = None) -> Optional[float]:
        """The fleet's `statistic` now, or None with fewer than `min_devices` devices in the window."""
        self.expire(now_ms)
        needed = self.min_devices if min_devices is None else min_devices
        if len(self._sorted) < max(1, needed):
            return None
        return _percentile_sorted(self._sorted, statistic)

    def to_dict(self) -> Dict[str, Any]:
        return {"duration_ms": self.duration_ms, "min_devices": self.min_devices,
                "devices": [[thing, ts, value] for thing, (ts, value) in self._latest.items()]}

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> "FleetWindow":
        window = cls(doc["duration_ms"] // 1000, doc.get("min_devices", DEFAULT_MIN_DEVICES))
        for thing, ts, value in sorted(doc.get("devices", []), key=lambda d: d[1]):
            window.add(thing, value, ts)
        return window


class FleetStats:
    """The FleetWindows of every statistical behavior, keyed by (profile, behavior)."""

    def __init__(self, min_devices: int = DEFAULT_MIN_DEVICES):
        self.min_devices = min_devices
        self._windows: Dict[Tuple[str, str], FleetWindow] = {}

    def window(self, profile: str, behavior: str, duration_seconds: Optional[int] = None) -> FleetWindow:
        key = (profile, behavior)
        window = self._windows.get(key)
        wanted = (duration_seconds or DEFAULT_DURATION_SECONDS) * 1000
        if window is None or window.duration_ms != wanted:
            window = self._windows[key] = FleetWindow(duration_seconds, self.min_devices)
        return window

    def drop_profile(self, profile: str) -> None:
        for key in [k for k in self._windows if k[0] == profile]:
            del self._windows[key]
