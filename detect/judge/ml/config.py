"""ML Detect settings: training period, minimum datapoints, retraining cadence, expiry, and the
band widths behind each confidence level."""

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Tuple

CONFIDENCE_LEVELS = ("LOW", "MEDIUM", "HIGH")
PENDING_BUILD, ACTIVE, EXPIRED = "PENDING_BUILD", "ACTIVE", "EXPIRED"
MODEL_STATUSES = (PENDING_BUILD, ACTIVE, EXPIRED)

# Device-side metrics ML Detect accepts (as AWS); custom metrics of type `number` are accepted too.
SUPPORTED_METRICS = (
    "aws:all-bytes-in",
    "aws:all-bytes-out",
    "aws:all-packets-in",
    "aws:all-packets-out",
    "aws:num-listening-tcp-ports",
    "aws:num-listening-udp-ports",
    "aws:num-established-tcp-connections",
)

# Band half-widths, in robust standard deviations of the device's own prediction error (log
# space), per confidence level: (single datapoint, sustained shift of the recent average).
# HIGH confidence = lowest sensitivity = widest band, as AWS defines it. Tuned with bench/bench_ml.py:
# the shift limits are lower than the first release's (VERSION1_BANDS) because the shift average
# now follows the error beyond the phase envelope, which is quieter.
# MEDIUM's was 0.95 until the harder fleet (seed 11) showed x1.45-1.56 exfiltrations on steep-rhythm
# devices peaking at 0.85-0.92 there (docs/ml-detect.md); 0.85 raised no false alarm on the benchmark.
DEFAULT_BANDS: Dict[str, Tuple[float, float]] = {
    "LOW": (4.0, 0.8),
    "MEDIUM": (5.0, 0.85),
    "HIGH": (6.5, 1.2),
}
VERSION1_BANDS: Dict[str, Tuple[float, float]] = {
    "LOW": (4.0, 1.1),
    "MEDIUM": (5.0, 1.3),
    "HIGH": (6.5, 1.6),
}


class MLConfigError(ValueError):
    """An ML Detect setting out of range; the message names the setting."""


def supports(metric_id: str, value_type: str = "count") -> bool:
    """True when ML Detect can model this metric (the seven device counts, custom numbers)."""
    if metric_id in SUPPORTED_METRICS:
        return True
    return not metric_id.startswith("aws:") and value_type == "number"


@dataclass(frozen=True)
class MLConfig:
    """How models train. Durations in seconds unless named otherwise.

    training_days / min_datapoints: a device model turns ACTIVE at the first build after it has
      seen this much history and this many datapoints; before that it is PENDING_BUILD and is
      judged through the fleet prior (when one is given).
    retrain_every_s: cadence of builds (status promotion, re-centring; the engine rebuilds fleet
      priors at this cadence too). 0 = every datapoint.
    expire_after_s: a model with no datapoint for this long is EXPIRED; its next datapoint starts
      it afresh (seeded from the fleet prior).
    tz_offset_s: the fleet's local time offset from UTC, so that daily rhythms line up.
    *_rate: floor of the learning rates (per datapoint) of level, hour-of-day shape, day-of-week
      offset, scale and the sustained-shift average. Early on each rate is 1/count (a running
      mean), so models converge fast and then settle to these rates.
    prior_weight: pseudo-datapoints per hour bucket the fleet prior is worth when it seeds a model.
    warm_datapoints: a PENDING_BUILD model that was not seeded by a prior is judged on its own
      (band widened) once it has this many datapoints and a prior is given.
    min_scale: floor of the learned scale (log space); keeps constant metrics (port counts) from
      alarming on float noise while 3 -> 4 listening ports still alarms at HIGH.
    bands: confidence level -> (datapoint sigmas, shift sigmas).
    low_side_factor: the band below the expected value is this much wider: a device going quiet
      is less suspicious than one talking more, and counts are skewed low in log space.
    building_shift_factor: the shift limit is this much higher while a model is PENDING_BUILD:
      its hour shape is still mostly the fleet's, so its errors run in streaks (2.5: the second
      version's shift limits are lower; 1.5 in version 1).
    confirm_points: a datapoint outside the band alarms only when the datapoint before it (no
      more than confirm_within_s earlier) was outside on the same side too: one odd report (a
      benign burst, a reboot's zeroed counters) is not an alarm, anything lasting two reports is.
      1 = every datapoint outside alarms at once (version 1's behaviour).
    immediate_ratio: ... except a datapoint this many times above the band's upper edge's
      centre (and outside the band), which alarms at once (0 = never at once).
    phase_tolerance_h: the band at time t covers what is expected from t - this to t + this (hours),
      so a daily rhythm shifted by up to this much (daylight saving, a device's time zone,
      schedule jitter) is normal; the sustained-shift average uses the same envelope. 0 = off.
    fleet_event_fraction / fleet_event_min_devices / fleet_event_window_s: a deviation that at
      least this fraction (and this many) of the devices judged under the same (profile, behavior)
      show in the same direction within the window is a fleet event: one fleet notice instead of
      per-device alarms (garrison.detect.judge.ml.fleetevent). fraction 0 disables it. The notice clears after
      fleet_event_clear_s without the event.
    feedback_margin: a datapoint verified FALSE_POSITIVE / BENIGN_POSITIVE widens the band so that
      this much more (factor) than its excess over the expected value is normal.
    """

    training_days: float = 7.0
    min_datapoints: int = 1000
    retrain_every_s: int = 86400
    expire_after_s: int = 14 * 86400
    tz_offset_s: int = 0
    level_rate: float = 0.002
    hour_rate: float = 0.01
    day_rate: float = 0.002
    scale_rate: float = 0.02
    shift_rate: float = 1.0 / 12
    prior_weight: int = 6
    warm_datapoints: int = 288
    min_scale: float = 0.02
    init_scale: float = 0.3
    bands: Mapping[str, Tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BANDS))
    low_side_factor: float = 1.5
    building_shift_factor: float = 2.5
    confirm_points: int = 2
    confirm_within_s: int = 900
    immediate_ratio: float = 10.0
    phase_tolerance_h: float = 1.0
    fleet_event_fraction: float = 0.2
    fleet_event_min_devices: int = 5
    fleet_event_window_s: int = 600
    fleet_event_clear_s: int = 3600
    feedback_margin: float = 1.25

    def __post_init__(self):
        def check(name, ok, what):
            if not ok:
                raise MLConfigError(f"ML config {name}={getattr(self, name)!r}: must be {what}")

        check("training_days", 0 <= self.training_days <= 365, "between 0 and 365")
        check("min_datapoints", isinstance(self.min_datapoints, int) and self.min_datapoints >= 1, "an integer >= 1")
        check("retrain_every_s", isinstance(self.retrain_every_s, int) and self.retrain_every_s >= 0, "an integer >= 0")
        check("expire_after_s", isinstance(self.expire_after_s, int) and self.expire_after_s > 0, "an integer > 0")
        check(
            "tz_offset_s",
            isinstance(self.tz_offset_s, int) and abs(self.tz_offset_s) <= 14 * 3600,
            "an integer within +-14 h",
        )
        for name in ("level_rate", "hour_rate", "day_rate", "scale_rate", "shift_rate"):
            check(name, 0 < getattr(self, name) <= 1, "in (0, 1]")
        check(
            "prior_weight",
            isinstance(self.prior_weight, int) and 1 <= self.prior_weight <= 10000,
            "an integer in 1..10000",
        )
        check("warm_datapoints", isinstance(self.warm_datapoints, int) and self.warm_datapoints >= 1, "an integer >= 1")
        check("min_scale", 0 < self.min_scale < 10, "in (0, 10)")
        check("init_scale", 0 < self.init_scale < 10, "in (0, 10)")
        check("low_side_factor", 0.5 <= self.low_side_factor <= 10, "in [0.5, 10]")
        check("building_shift_factor", 1 <= self.building_shift_factor <= 10, "in [1, 10]")
        check("confirm_points", self.confirm_points in (1, 2), "1 or 2")
        check(
            "confirm_within_s", isinstance(self.confirm_within_s, int) and self.confirm_within_s > 0, "an integer > 0"
        )
        check("immediate_ratio", self.immediate_ratio == 0 or self.immediate_ratio > 1, "0 or > 1")
        check("phase_tolerance_h", 0 <= self.phase_tolerance_h <= 3, "in [0, 3]")
        check("fleet_event_fraction", 0 <= self.fleet_event_fraction <= 1, "in [0, 1]")
        check(
            "fleet_event_min_devices",
            isinstance(self.fleet_event_min_devices, int) and self.fleet_event_min_devices >= 2,
            "an integer >= 2",
        )
        check(
            "fleet_event_window_s",
            isinstance(self.fleet_event_window_s, int) and 60 <= self.fleet_event_window_s <= 86400,
            "an integer in 60..86400",
        )
        check(
            "fleet_event_clear_s",
            isinstance(self.fleet_event_clear_s, int) and 0 <= self.fleet_event_clear_s <= 7 * 86400,
            "an integer in 0..604800",
        )
        check("feedback_margin", 1 <= self.feedback_margin <= 10, "in [1, 10]")
        bands = dict(self.bands)
        check(
            "bands",
            set(bands) == set(CONFIDENCE_LEVELS) and all(len(b) == 2 and b[0] > 0 and b[1] > 0 for b in bands.values()),
            "{LOW|MEDIUM|HIGH: (datapoint sigmas > 0, shift sigmas > 0)}",
        )
        object.__setattr__(self, "bands", {k: (float(v[0]), float(v[1])) for k, v in bands.items()})

    @classmethod
    def version1(cls, **overrides) -> "MLConfig":
        """The settings of the first release (every datapoint outside the band alarms at once, no
        phase tolerance, no fleet events), kept as the benchmark's baseline."""
        settings: Dict[str, Any] = dict(
            confirm_points=1,
            immediate_ratio=0.0,
            phase_tolerance_h=0.0,
            fleet_event_fraction=0.0,
            bands=dict(VERSION1_BANDS),
            building_shift_factor=1.5,
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MLConfig":
        """Build from a config-file section (unknown keys refused, so typos do not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MLConfigError(f"unknown ML config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**dict(data))
