"""Fleet-wide events: many devices of one (profile, behavior) deviating the same way at once.

A firmware update that triples every device's traffic for two hours, a maintenance window, a
daylight-saving change: each device model sees its own anomaly, but the operator should get one
fleet notice, not an alarm per device. FleetEvents counts, per time bucket, the devices judged
and those outside their band (or shifted) above and below. A deviation is a fleet event when at
least `fleet_event_fraction` of the devices judged, and at least `fleet_event_min_devices`, show
it in the same direction in the current bucket or the one before (the window is two buckets, so
a device's second report, the one that would confirm its alarm, already sees the whole fleet's
first). A lone device, or a few, still alarms.

Bounded: two buckets of {thing: direction}, i.e. O(devices reporting in a window). In memory:
after a restart the counts start again (a fleet event in progress may let a few devices alarm).

    events = FleetEvents(config)
    changes = events.note(thing, ts_ms, judgement.direction)  # ["close", "open"]: the notice
    if judgement.anomalous and events.active(judgement.direction): ...  # part of a fleet event
    events.describe()   # what the open notice says
"""

from typing import Dict, List, Optional

from .config import MLConfig


class FleetEvents:
    """Fleet-event recognition for one (profile, behavior). Not thread-safe."""

    __slots__ = (
        "fraction",
        "min_devices",
        "bucket_ms",
        "hold",
        "_bucket",
        "_current",
        "_previous",
        "_last_seen",
        "open_direction",
        "opened_ms",
        "peak",
    )

    def __init__(self, config: Optional[MLConfig] = None):
        config = config or MLConfig()
        self.fraction = config.fleet_event_fraction
        self.min_devices = config.fleet_event_min_devices
        self.bucket_ms = config.fleet_event_window_s * 1000 // 2
        # the notice clears after this many complete buckets without the event (so an event that
        # flickers, such as a rhythm shifted by daylight saving, stays one notice)
        self.hold = max(1, config.fleet_event_clear_s * 1000 // self.bucket_ms)
        self._last_seen = 0
        self._bucket: Optional[int] = None  # the current bucket; None before the first datapoint
        self._current: Dict[str, int] = {}
        self._previous: Dict[str, int] = {}
        self.open_direction = 0  # direction of the open fleet notice, 0 = none
        self.opened_ms = 0
        self.peak = (0, 0)  # (devices deviating, devices judged) at the notice's peak

    @property
    def enabled(self) -> bool:
        return self.fraction > 0

    def note(self, thing: str, ts_ms: int, direction: int) -> List[str]:
        """Count one judged datapoint (direction +1 / -1 outside the band or shifted, 0 inside).
        Returns what happened to the fleet notice, in order: "close" when a whole bucket passed
        without the open event (the notice should clear), "open" when this datapoint makes a
        fleet event (a notice should be raised)."""
        changes: List[str] = []
        if not self.enabled:
            return changes
        bucket = ts_ms // self.bucket_ms
        if self._bucket is None or bucket > self._bucket:
            # The bucket just completed decides whether an open event is over.
            if self._bucket is not None:
                completed = self._current
                self._previous = completed if bucket == self._bucket + 1 else {}
                self._current = {}
                if self.open_direction:
                    if self._event_in(completed, self.open_direction):
                        self._last_seen = self._bucket
                    elif bucket - 1 - self._last_seen >= self.hold:
                        self.open_direction = 0
                        changes.append("close")
            self._bucket = bucket
        if bucket < self._bucket - 1:
            return changes  # too late to count (a spooled backlog): judged alone
        counts = self._current if bucket == self._bucket else self._previous
        counts[thing] = direction
        if direction and not self.open_direction and self.active(direction):
            self.open_direction, self.opened_ms, self._last_seen = direction, ts_ms, bucket
            self.peak = (0, 0)
            changes.append("open")
        if self.open_direction:
            for counted in (self._previous, self._current):
                deviating = sum(1 for d in counted.values() if d == self.open_direction)
                if deviating > self.peak[0]:
                    self.peak = (deviating, len(counted))
        return changes

    def active(self, direction: int) -> bool:
        """Whether a deviation in `direction` is, right now, part of a fleet event."""
        return (
            bool(direction)
            and self.enabled
            and (self._event_in(self._previous, direction) or self._event_in(self._current, direction))
        )

    def _event_in(self, counted: Dict[str, int], direction: int) -> bool:
        deviating = sum(1 for d in counted.values() if d == direction)
        return deviating >= self.min_devices and deviating >= self.fraction * len(counted)

    def describe(self) -> Dict[str, object]:
        return {
            "direction": "above" if self.open_direction > 0 else "below",
            "devices": self.peak[0],
            "devicesJudged": self.peak[1],
            "fraction": round(self.peak[0] / self.peak[1], 3) if self.peak[1] else None,
            "startTime": self.opened_ms / 1000.0,
        }
