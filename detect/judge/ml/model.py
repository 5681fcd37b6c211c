"""One device's learned normal for one metric: a robust seasonal baseline in log space.

    y = sign(v) * log1p(|v|)                  (traffic multiplies, so work in log space)
    expected(t) = level + hour_shape(t) + weekday_offset(t)
    band(t)     = [expected(t) - 1.5 k scale(t), expected(t) + k scale(t)]   (k: confidence level)

hour_shape is 24 hourly knots interpolated linearly (a smooth daily rhythm), weekday_offset is 7
values (weekly rhythm), scale is 24 hourly knots of the typical prediction error (an EWMA of the
absolute error, MAD-like). Every update is Huber-clipped at 3 scales, so one spike barely moves
the model while a lasting change is learned within about a day. A short EWMA of the clipped,
standardised error ("shift") catches sustained modest increases (slow exfiltration) that stay
inside the per-datapoint band.

A datapoint outside the band alarms when the one before it was outside on the same side too
(config.confirm_points; a single odd report is not an alarm) unless it is far outside
(config.immediate_ratio); the band covers the rhythm shifted by up to config.phase_tolerance_h.
An operator's verdict teaches the model (teach()): a benign excursion widens the band around its
hour of day, a benign lasting change becomes the new level; a true positive teaches nothing.

The whole state is one fixed-size struct-packed bytearray (STATE_SIZE bytes): to_state() is those
bytes, and from_state() takes them back exactly (a version-1 state is upgraded on load).
"""

import math
import struct
from dataclasses import dataclass, asdict
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple, Union

from .config import ACTIVE, CONFIDENCE_LEVELS, EXPIRED, PENDING_BUILD, MLConfig

if TYPE_CHECKING:  # pragma: no cover
    from .prior import FleetPrior

_VERSION = 2
_SEEDED, _ACTIVE = 1, 2  # flag bits
_HOURS, _DAYS = 24, 7
# version, flags, taught tolerance above / below the band (log units / 20), datapoints,
# first / last datapoint, last build (epoch seconds)
_HEAD = struct.Struct("<BBBBIIII")
_TOL_UNIT = 0.05
_COUNTS = struct.Struct("<%dH" % (_HOURS + _DAYS))  # datapoints per hour knot, per weekday
# level, shift, weekday[7], hour shape[24], hour scale[24], then two slots: the first two
# deseasonalised datapoints while anchoring (n < 3); afterwards the previous datapoint's score
# (for confirmation) and the hour knot the taught tolerance applies around (-1: any hour); last,
# the guard: an excess over the band (log units) verified as an attack, never learned (0: none)
_FLOATS = struct.Struct("<%df" % (2 + _DAYS + 2 * _HOURS + 3))
_LVL, _SHIFT, _DOW, _HOD, _SCL = 0, 1, 2, 2 + _DAYS, 2 + _DAYS + _HOURS
_EARLY = _SCL + _HOURS
_PREV, _TOL_HOUR, _GUARD = _EARLY, _EARLY + 1, _EARLY + 2
_V1_SIZE = 318  # version 1 had no guard
_TOL_HOURS = 1.5  # a tolerance taught at one hour of day applies within this many hours of it
_CONFIRM_AT = 0.5  # the previous datapoint confirms when it was this far (x the band) out, same side
_ANCHOR = 3  # datapoints whose median anchors the level before anything else is learned
_COUNTS_AT = _HEAD.size
_FLOATS_AT = _COUNTS_AT + _COUNTS.size
STATE_SIZE = _FLOATS_AT + _FLOATS.size
_MAX_COUNT = 65535
_ABS_TO_SIGMA = math.sqrt(math.pi / 2)  # E|e| = sigma * sqrt(2/pi) for normal errors
_CLIP_LOCATION, _CLIP_SCALE, _CLIP_SHIFT = 3.0, 4.0, 4.0
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def to_log(value: float) -> float:
    """Signed log1p: keeps zero, orders negatives (custom numbers may be negative)."""
    return math.copysign(math.log1p(abs(value)), value)


def from_log(y: float) -> float:
    return math.copysign(math.expm1(min(abs(y), 700.0)), y)


def _fmt(value: float) -> str:
    return "%d" % round(value) if abs(value) >= 100 or value == int(value) else "%.3g" % value


@dataclass(frozen=True)
class Judgement:
    """The verdict on one datapoint, with its reason.

    anomalous: the datapoint violates (feed it to the consecutive-datapoint logic as verdict).
    low / high: the learned normal band at that time, in metric units (None when not judged;
      low is None too when the fleet prior judged: it bounds an unknown device above only).
    status: the model status (PENDING_BUILD, ACTIVE, EXPIRED).
    explanation: one sentence naming metric, value, band, expected value, confidence and basis.
    basis: "device" (own model), "device+fleet" (a building model seeded from the fleet prior),
      "fleet" (the fleet prior alone) or "none" (not judged: no model, no prior).
    kind: "spike" (outside the band), "shift" (recent average shifted), "" otherwise.
    score: error of this datapoint in robust sigmas (signed); shift: the recent average of it;
    limit: the sigmas that applied (band for spikes, shift limit for shifts).
    """

    anomalous: bool
    low: Optional[float]
    high: Optional[float]
    status: str
    metric: str = "value"
    value: float = 0.0
    confidence: str = "HIGH"
    basis: str = "none"
    kind: str = ""
    expected: Optional[float] = None
    score: float = 0.0
    shift: float = 0.0
    limit: float = 0.0
    when: str = ""  # e.g. "Tue 14:00 UTC", the seasonal slot the band belongs to
    note: str = ""  # why a datapoint was not judged
    direction: int = 0  # +1 / -1: beyond half the band (or half the shift limit) above / below:
    # what fleet events count (garrison.detect.judge.ml.fleetevent), alarm or not
    outside: bool = False  # outside the band (an alarm once confirmed by the next datapoint)

    @property
    def explanation(self) -> str:
        # Built on demand: the engine judges every datapoint but explains only violations.
        metric, value = self.metric, _fmt(self.value)
        if self.basis == "none":
            return f"{metric} = {value} not judged: {self.note}"
        source = {
            "device": "device model",
            "device+fleet": "device model seeded from the fleet prior",
            "fleet": "fleet prior",
        }[self.basis]
        low = "-" if self.low is None else _fmt(self.low)
        high = "-" if self.high is None else _fmt(self.high)
        expected = "-" if self.expected is None else _fmt(self.expected)
        band = f"normal band [{low}, {high}] (expected ~{expected} at {self.when})"
        if self.kind == "spike":
            return (
                f"{metric} = {value} is {'above' if self.score > 0 else 'below'} the learned {band}: "
                f"{abs(self.score):.1f} sigma, beyond {self.limit:g} for {self.confidence} confidence "
                f"({source}, {self.status})"
            )
        if self.kind == "shift":
            return (
                f"{metric} = {value} is inside the learned {band}, but recent datapoints sit "
                f"{abs(self.shift):.1f} sigma {'above' if self.shift > 0 else 'below'} normal on "
                f"average: sustained shift beyond {self.limit:g} for {self.confidence} confidence "
                f"({source}, {self.status})"
            )
        if self.outside:
            return (
                f"{metric} = {value} is {'above' if self.direction > 0 else 'below'} the learned "
                f"{band} ({abs(self.score):.1f} sigma) for {self.confidence} confidence, not yet "
                f"confirmed by a second datapoint ({source}, {self.status})"
            )
        return (
            f"{metric} = {value} is inside the learned {band} for {self.confidence} confidence "
            f"({source}, {self.status})"
        )

    @property
    def judged(self) -> bool:
        """False when the model could not judge (PENDING_BUILD or EXPIRED without a fleet
        prior): not a conforming datapoint, no datapoint at all; it must not clear an alarm."""
        return self.basis != "none"

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready (for violationEventAdditionalInfo and the API), explanation included."""
        data = asdict(self)
        data["explanation"] = self.explanation
        return data


class Model:
    """The learned normal of one (thing, behavior). Not thread-safe; one owner at a time."""

    __slots__ = ("config", "_b")

    def __init__(self, config: Optional[MLConfig] = None, state: Optional[bytes] = None):
        self.config = config or MLConfig()
        if state is None:
            self._b = bytearray(STATE_SIZE)
            self._b[0] = _VERSION
        else:
            if state[:1] == b"\x01" and len(state) == _V1_SIZE:
                state = bytes(state) + bytes(STATE_SIZE - _V1_SIZE)
            if len(state) != STATE_SIZE or state[0] not in (1, _VERSION):
                raise ValueError(
                    f"ML model state: expected {STATE_SIZE} bytes of version "
                    f"{_VERSION}, got {len(state)} bytes" + (f" of version {state[0]}" if state else "")
                )
            self._b = bytearray(state)
            if state[0] == 1:  # same layout; the spare slots gain a meaning
                self._b[0], self._b[2], self._b[3] = _VERSION, 0, 0
                if self.datapoints >= _ANCHOR:
                    struct.pack_into("<2f", self._b, _FLOATS_AT + 4 * _EARLY, 0.0, -1.0)

    @classmethod
    def new(cls, config: Optional[MLConfig] = None) -> "Model":
        return cls(config)

    @classmethod
    def from_state(cls, state: Union[bytes, bytearray, memoryview], config: Optional[MLConfig] = None) -> "Model":
        """The model whose to_state() gave `state`; pass the config it was trained with."""
        return cls(config, bytes(state))

    def to_state(self) -> bytes:
        return bytes(self._b)

    def __eq__(self, other):
        return isinstance(other, Model) and self._b == other._b

    __hash__ = None  # type: ignore[assignment]  # unhashable (compared by value); mypy wants a method

    # --- header -----------------------------------------------------------------------------

    def _head(self):
        """(version, flags, tolerance byte above, below, n, first_s, last_s, built_s)"""
        return _HEAD.unpack_from(self._b, 0)

    @property
    def datapoints(self) -> int:
        return self._head()[4]

    @property
    def tolerance(self) -> Tuple[float, float, Optional[int]]:
        """What feedback taught: (log units accepted above the band, below it, hour knot it
        applies around or None for any hour)."""
        head = self._head()
        hour = _FLOATS.unpack_from(self._b, _FLOATS_AT)[_TOL_HOUR] if head[4] >= _ANCHOR else -1
        return head[2] * _TOL_UNIT, head[3] * _TOL_UNIT, (None if hour < 0 else int(hour))

    @property
    def seeded(self) -> bool:
        """Whether the fleet prior seeded this model's shape at its first datapoint."""
        return bool(self._b[1] & _SEEDED)

    def status(self, now_ms: int) -> str:
        _, flags, _, _, n, _, last_s, _ = self._head()
        if n and now_ms // 1000 - last_s > self.config.expire_after_s:
            return EXPIRED
        return ACTIVE if flags & _ACTIVE else PENDING_BUILD

    def training_summary(self, now_ms: int) -> Dict[str, Any]:
        """The fields of AWS's BehaviorModelTrainingSummary that belong to a model (times in ms)."""
        _, _, _, _, n, first_s, _, built_s = self._head()
        cfg = self.config
        needed = max(cfg.min_datapoints, 1)
        return {
            "modelStatus": self.status(now_ms),
            "datapointsCollectionPercentage": round(min(100.0, 100.0 * n / needed), 1),
            "trainingDataCollectionStartDate": first_s * 1000 if n else None,
            "lastModelRefreshDate": built_s * 1000 if n else None,
            "datapoints": n,
            "seededFromFleet": self.seeded,
        }

    def summary_for_prior(self) -> Optional[tuple]:
        """(level, centred hour shape x24, centred weekday offsets x7, scale x24) for the fleet
        prior, or None while the model has too little data to speak for the fleet."""
        _, flags, _, _, n, _, _, _ = self._head()
        if not (flags & _ACTIVE or n >= self.config.warm_datapoints):
            return None
        f = _FLOATS.unpack_from(self._b, _FLOATS_AT)
        hour = f[_HOD : _HOD + _HOURS]
        day = f[_DOW : _DOW + _DAYS]
        mean_hour, mean_day = sum(hour) / _HOURS, sum(day) / _DAYS
        return (
            (f[_LVL] + mean_hour + mean_day,)
            + tuple(h - mean_hour for h in hour)
            + tuple(d - mean_day for d in day)
            + f[_SCL : _SCL + _HOURS]
        )

    # --- time -------------------------------------------------------------------------------

    def _when(self, ts_ms: int) -> Tuple[int, int, float, int]:
        """(hour knot i0, i1, weight of i1, weekday) of a timestamp in the fleet's local time."""
        local_s = ts_ms // 1000 + self.config.tz_offset_s
        hours = (local_s % 86400) / 3600.0 - 0.5  # knots sit at the middle of each hour
        base = math.floor(hours)
        w1 = hours - base
        i0 = base % _HOURS
        return i0, (i0 + 1) % _HOURS, w1, (local_s // 86400 + 3) % _DAYS  # 1970-01-01: Thursday

    @staticmethod
    def _expect(f, i0, i1, w1, day) -> Tuple[float, float]:
        w0 = 1.0 - w1
        centre = f[_LVL] + w0 * f[_HOD + i0] + w1 * f[_HOD + i1] + f[_DOW + day]
        return centre, w0 * f[_SCL + i0] + w1 * f[_SCL + i1]

    def _phase_range(self, hour: Sequence[float], i0: int, w1: float) -> Tuple[float, float]:
        """(lowest, highest) of the interpolated hour shape within +-phase_tolerance_h of the knot
        position i0 + w1, relative to its value there: how far the expected value moves when the
        rhythm is shifted by up to that much."""
        delta = self.config.phase_tolerance_h
        if not delta:
            return 0.0, 0.0
        w0 = 1.0 - w1
        here = w0 * hour[i0] + w1 * hour[(i0 + 1) % _HOURS]
        whole = int(delta)
        if whole == delta:
            # (the common case, whole hours: the window's ends share i0's weights, and the knots
            # inside it are i0 - whole + 1 .. i0 + whole; profiled, the generic path below costs
            # twice as much)
            a, b = (i0 - whole) % _HOURS, (i0 + whole) % _HOURS
            values = [w0 * hour[a] + w1 * hour[(a + 1) % _HOURS], w0 * hour[b] + w1 * hour[(b + 1) % _HOURS]]
            values += [hour[(i0 + k) % _HOURS] for k in range(1 - whole, whole + 1)]
            return min(values) - here, max(values) - here
        x = i0 + w1
        points = [x - delta, x + delta] + list(range(math.ceil(x - delta), math.floor(x + delta) + 1))
        values = []
        for p in points:
            base = math.floor(p)
            w = p - base
            values.append((1.0 - w) * hour[base % _HOURS] + w * hour[(base + 1) % _HOURS])
        return min(values) - here, max(values) - here

    def _outside(
        self,
        y: float,
        centre: float,
        below: float,
        above: float,
        sigma: float,
        i0: int,
        w1: float,
        tol_up: float,
        tol_down: float,
        tol_hour: float,
    ) -> float:
        """The datapoint's distance outside the phase envelope [centre + below, centre + above]
        in sigmas (signed; 0 inside), less what feedback taught is normal at this hour."""
        error = y - centre
        if error > above:
            excess = error - above
        elif error < below:
            excess = error - below
        else:
            return 0.0
        if tol_hour < 0 or abs((i0 + w1 - tol_hour + 12) % 24 - 12) <= _TOL_HOURS:
            excess = max(0.0, excess - tol_up) if excess > 0 else min(0.0, excess + tol_down)
        return excess / sigma

    # --- learning ---------------------------------------------------------------------------

    def update(self, value: float, ts_ms: int, prior: "Optional[FleetPrior]" = None) -> None:
        """Learn one datapoint. Judge it first (judge() does not learn). A prior, when given,
        seeds a model that has no data yet (or has just expired)."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"ML datapoint must be a finite number, got {value!r}")
        ts_s = int(ts_ms) // 1000
        if not 0 <= ts_s < 2**32:
            raise ValueError(f"ML datapoint time must be epoch milliseconds, got {ts_ms!r}")
        cfg = self.config
        _, flags, tol_up, tol_down, n, first_s, last_s, built_s = self._head()
        if n and ts_s - last_s > cfg.expire_after_s:
            self._b[:] = bytes(STATE_SIZE)
            flags, n, tol_up, tol_down = 0, 0, 0, 0
        y = to_log(value)
        i0, i1, w1, day = self._when(ts_ms)
        if n == 0:
            self._start(y, ts_s, i0, i1, w1, day, prior)
            return
        f = list(_FLOATS.unpack_from(self._b, _FLOATS_AT))
        counts = list(_COUNTS.unpack_from(self._b, _COUNTS_AT))
        centre, spread = self._expect(f, i0, i1, w1, day)
        tols = (tol_up, tol_down)
        if n < _ANCHOR:
            # The first datapoints only anchor the level, at the median of the first three
            # (deseasonalised): one odd value among them, such as an agent's zeroed first delta,
            # does not become the device's normal.
            early = y - (centre - f[_LVL])
            n += 1
            if n < _ANCHOR:
                f[_EARLY + n - 1] = early
            else:
                f[_LVL] = sorted((f[_EARLY], f[_EARLY + 1], early))[1]
                f[_PREV], f[_TOL_HOUR] = 0.0, -1.0
            if ts_s - built_s >= cfg.retrain_every_s:
                flags, built_s = self._build(f, counts, flags, n, first_s, ts_s)
            self._store(flags, tols, n, first_s, max(last_s, ts_s), built_s, counts, f)
            return
        w0 = 1.0 - w1
        sigma = max(spread, cfg.min_scale)
        error = y - centre
        below, above = self._phase_range(f[_HOD : _HOD + _HOURS], i0, w1)
        outside = self._outside(
            y, centre, below, above, sigma, i0, w1, tol_up * _TOL_UNIT, tol_down * _TOL_UNIT, f[_TOL_HOUR]
        )
        # The shift average follows the standardised error beyond the phase envelope (less what
        # feedback taught), so a rhythm shifted by an hour does not read as a sustained shift.
        f[_SHIFT] += cfg.shift_rate * (max(-_CLIP_SHIFT, min(_CLIP_SHIFT, outside)) - f[_SHIFT])
        f[_PREV] = outside / math.sqrt(1.0 + 1.0 / n)
        n = min(n + 1, 0xFFFFFFFF)
        if f[_GUARD] and error - above >= f[_GUARD]:
            # As large as an excursion an operator verified as an attack: never learned as normal.
            self._store(flags, tols, n, first_s, max(last_s, ts_s), built_s, counts, f)
            return
        # Level, then hour shape, then weekday, each on what the previous left unexplained.
        step = max(-_CLIP_LOCATION * sigma, min(_CLIP_LOCATION * sigma, error))
        rate = max(1.0 / n, cfg.level_rate)
        f[_LVL] += rate * step
        step *= 1.0 - rate
        norm = w0 * w0 + w1 * w1  # normalised LMS over the two knots
        for i, w in ((i0, w0), (i1, w1)):
            if w > 0.0:
                f[_HOD + i] += max(1.0 / (counts[i] + 1), cfg.hour_rate) * w * step / norm
        abs_error = min(abs(error), _CLIP_SCALE * sigma) * _ABS_TO_SIGMA
        for i, w in ((i0, w0), (i1, w1)):
            if w > 0.0:
                f[_SCL + i] += max(1.0 / (counts[i] + 2), cfg.scale_rate) * w * (abs_error - f[_SCL + i])
        nearest = i0 if w1 < 0.5 else i1
        counts[nearest] = min(counts[nearest] + 1, _MAX_COUNT)
        if ts_s - first_s >= 86400:
            # Weekday offsets start after a full day: the first day's errors belong to the level
            # and the hour shape, which are still converging, not to that weekday.
            rest = y - self._expect(f, i0, i1, w1, day)[0]
            rest = max(-_CLIP_LOCATION * sigma, min(_CLIP_LOCATION * sigma, rest))
            counts[_HOURS + day] = min(counts[_HOURS + day] + 1, _MAX_COUNT)
            f[_DOW + day] += max(1.0 / counts[_HOURS + day], cfg.day_rate) * rest
        if ts_s - built_s >= cfg.retrain_every_s:
            flags, built_s = self._build(f, counts, flags, n, first_s, ts_s)
        self._store(flags, tols, n, first_s, max(last_s, ts_s), built_s, counts, f)

    def _store(self, flags, tols, n, first_s, last_s, built_s, counts, f) -> None:
        _HEAD.pack_into(self._b, 0, _VERSION, flags, tols[0], tols[1], n, first_s, last_s, built_s)
        _COUNTS.pack_into(self._b, _COUNTS_AT, *counts)
        _FLOATS.pack_into(self._b, _FLOATS_AT, *f)

    def _start(self, y, ts_s, i0, i1, w1, day, prior) -> None:
        cfg = self.config
        f = [0.0] * (_FLOATS.size // 4)
        counts = [0] * (_HOURS + _DAYS)
        flags = 0
        if prior is not None:
            f[_HOD : _HOD + _HOURS] = prior.hour
            f[_DOW : _DOW + _DAYS] = prior.weekday
            f[_SCL : _SCL + _HOURS] = prior.scale
            w0 = 1.0 - w1
            f[_LVL] = y - (w0 * prior.hour[i0] + w1 * prior.hour[i1] + prior.weekday[day])
            counts = [cfg.prior_weight] * _HOURS + [min(cfg.prior_weight * 24, _MAX_COUNT)] * _DAYS
            flags = _SEEDED
        else:
            f[_LVL] = y
            f[_SCL : _SCL + _HOURS] = [cfg.init_scale] * _HOURS
        f[_EARLY] = f[_LVL]
        flags, _ = self._build(f, counts, flags, 1, ts_s, ts_s)
        self._store(flags, (0, 0), 1, ts_s, ts_s, ts_s, counts, f)

    def _build(self, f, counts, flags, n, first_s, now_s) -> Tuple[int, int]:
        """The periodic build: re-centre shape and weekday offsets into the level (predictions
        unchanged) and promote to ACTIVE once trained long enough."""
        cfg = self.config
        mean_hour = sum(f[_HOD : _HOD + _HOURS]) / _HOURS
        mean_day = sum(f[_DOW : _DOW + _DAYS]) / _DAYS
        for i in range(_HOURS):
            f[_HOD + i] -= mean_hour
        for i in range(_DAYS):
            f[_DOW + i] -= mean_day
        f[_LVL] += mean_hour + mean_day
        if n >= cfg.min_datapoints and now_s - first_s >= cfg.training_days * 86400:
            flags |= _ACTIVE
        return flags, now_s

    # --- feedback ---------------------------------------------------------------------------

    def teach(self, value: float, ts_ms: int, benign: bool = True, lasting: bool = False) -> str:
        """An operator verified the violation at (value, ts_ms).

        benign (FALSE_POSITIVE / BENIGN_POSITIVE): make that datapoint normal. A lasting change
        (lasting=True, or a sustained shift) becomes the new level; a passing excursion widens
        the band, on its side, by feedback_margin x its excess, around its hour of day (a second
        excursion taught at another hour widens it at every hour).
        not benign (TRUE_POSITIVE): the model must never accept it: datapoints above the band by
        at least 70 % of its excess are no longer learned (so a recurring attack is not absorbed
        into the daily rhythm), and any tolerance taught above is withdrawn.
        Returns what changed: "level", "band", "guard" or "" (nothing: the datapoint is already
        normal, or the model has no data of its own)."""
        cfg = self.config
        _, flags, tol_up, tol_down, n, first_s, last_s, built_s = self._head()
        if n < _ANCHOR:
            return ""
        f = list(_FLOATS.unpack_from(self._b, _FLOATS_AT))
        counts = list(_COUNTS.unpack_from(self._b, _COUNTS_AT))
        y = to_log(float(value))
        i0, i1, w1, day = self._when(ts_ms)
        centre, spread = self._expect(f, i0, i1, w1, day)
        sigma = max(spread, cfg.min_scale)
        below, above = self._phase_range(f[_HOD : _HOD + _HOURS], i0, w1)
        outside = self._outside(y, centre, below, above, sigma, i0, w1, 0.0, 0.0, -1.0)
        point_k = max(k for k, _ in cfg.bands.values())
        learned = ""
        if not benign:
            excess = y - centre - above
            if excess > 0:
                f[_GUARD] = min(f[_GUARD] or math.inf, 0.7 * excess)
                tol_up, learned = 0, "guard"
        elif lasting or (abs(outside) < point_k and abs(f[_SHIFT]) >= 1.0):
            # The device's normal moved: the datapoint's error (or, for a shift inside the band,
            # the recent average error) becomes part of the level.
            move = (y - centre) if abs(outside) >= point_k else f[_SHIFT] * sigma
            f[_LVL] += move
            learned = "level" if move else ""
        elif outside:
            need = cfg.feedback_margin * abs(outside) * sigma
            units = min(255, int(math.ceil(need / _TOL_UNIT)))
            hour = i0 + w1
            if f[_TOL_HOUR] >= 0 and abs((hour - f[_TOL_HOUR] + 12) % 24 - 12) > _TOL_HOURS:
                f[_TOL_HOUR] = -1.0  # taught at two different hours: any hour
            elif (tol_up or tol_down) == 0:
                f[_TOL_HOUR] = round(hour, 2) % 24
            if outside > 0:
                tol_up = max(tol_up, units)
            else:
                tol_down = max(tol_down, units)
            learned = "band"
        if benign:
            f[_SHIFT], f[_PREV] = 0.0, 0.0
        self._store(flags, (tol_up, tol_down), n, first_s, last_s, built_s, counts, f)
        return learned

    # --- judging ----------------------------------------------------------------------------

    def judge(
        self,
        value: float,
        ts_ms: int,
        confidence: str = "HIGH",
        prior: "Optional[FleetPrior]" = None,
        metric: str = "value",
    ) -> Judgement:
        """Judge one datapoint against the learned normal (does not learn it; call update())."""
        if confidence not in CONFIDENCE_LEVELS:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE_LEVELS)}, got {confidence!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"ML datapoint must be a finite number, got {value!r}")
        cfg = self.config
        status = self.status(ts_ms)
        _, flags, tol_up, tol_down, n, first_s, last_s, _ = self._head()
        i0, i1, w1, day = self._when(ts_ms)
        own = status == ACTIVE or (
            status == PENDING_BUILD
            and prior is not None
            and n >= _ANCHOR
            and (flags & _SEEDED or n >= cfg.warm_datapoints)
        )
        y = to_log(value)
        if own:
            f = _FLOATS.unpack_from(self._b, _FLOATS_AT)
            centre, spread = self._expect(f, i0, i1, w1, day)
            sigma = max(spread, cfg.min_scale) * math.sqrt(1.0 + 1.0 / n)
            basis = "device+fleet" if status != ACTIVE and flags & _SEEDED else "device"
            previous_shift = f[_SHIFT]
            below, above = self._phase_range(f[_HOD : _HOD + _HOURS], i0, w1)
            tol = (tol_up * _TOL_UNIT, tol_down * _TOL_UNIT, f[_TOL_HOUR])
            recent = ts_ms // 1000 - last_s <= cfg.confirm_within_s
            previous = f[_PREV] if recent else 0.0
        elif prior is not None:
            centre = prior.level + (1 - w1) * prior.hour[i0] + w1 * prior.hour[i1] + prior.weekday[day]
            sigma = math.hypot(max((1 - w1) * prior.scale[i0] + w1 * prior.scale[i1], cfg.min_scale), prior.spread)
            basis, previous_shift = "fleet", 0.0
            below, above = self._phase_range(prior.hour, i0, w1)
            tol, previous = (0.0, 0.0, -1.0), 0.0
        else:
            if status == EXPIRED:
                why = "no datapoint for %.1f days" % ((ts_ms // 1000 - last_s) / 86400)
            else:
                why = "%d of %d datapoints, %.1f of %g training days" % (
                    n,
                    cfg.min_datapoints,
                    max(0, ts_ms // 1000 - first_s) / 86400 if n else 0,
                    cfg.training_days,
                )
            return Judgement(
                False,
                None,
                None,
                status,
                metric,
                value,
                confidence,
                "none",
                note=f"model {status} ({why}) and no fleet prior",
            )
        point_k, shift_k = cfg.bands[confidence]
        if status != ACTIVE:
            shift_k *= cfg.building_shift_factor
        low_k = point_k * cfg.low_side_factor
        score = self._outside(y, centre, below, above, sigma, i0, w1, *tol)
        clipped = max(-_CLIP_SHIFT, min(_CLIP_SHIFT, score))
        shift = previous_shift + cfg.shift_rate * (clipped - previous_shift)
        if basis == "fleet":
            # Nothing is known of this device's own level yet: the fleet only bounds it above
            # (a device may well be quieter than its fleet, and a first report's deltas are 0).
            low_k = math.inf
        direction, kind, limit = 0, "", point_k
        if (
            score > point_k / 2
            or -score > low_k / 2
            or shift > shift_k / 2
            or -shift > shift_k * cfg.low_side_factor / 2
        ):
            # leaning out, for fleet events: many devices half out of their bands at once are one event
            direction = 1 if (score if abs(score) > point_k / 2 else shift) > 0 else -1
        if score > point_k or -score > low_k:
            direction = 1 if score > 0 else -1
            limit = point_k if score > 0 else low_k
            # One datapoint outside is an alarm only when the previous one was outside on the same
            # side too, or when it is far outside (immediate_ratio).
            if (
                cfg.confirm_points == 1
                or previous * direction > _CONFIRM_AT * limit
                or (direction > 0 and cfg.immediate_ratio and y - centre - above > math.log(cfg.immediate_ratio))
            ):
                kind = "spike"
        if (
            not kind
            and basis != "fleet"
            and n >= 2.0 / cfg.shift_rate
            and (shift > shift_k or -shift > shift_k * cfg.low_side_factor)
        ):
            kind, limit = "shift", (shift_k if shift > 0 else shift_k * cfg.low_side_factor)
            direction = 1 if shift > 0 else -1
        local_s = ts_ms // 1000 + cfg.tz_offset_s
        when = "%s %02d:00 %s" % (
            _WEEKDAYS[day],
            (local_s % 86400) // 3600,
            "UTC%+g" % (cfg.tz_offset_s / 3600) if cfg.tz_offset_s else "UTC",
        )
        high_edge = centre + above + point_k * sigma
        low_edge = centre + below - low_k * sigma
        if tol[0] or tol[1]:
            hour_ok = tol[2] < 0 or abs((i0 + w1 - tol[2] + 12) % 24 - 12) <= _TOL_HOURS
            if hour_ok:
                high_edge += tol[0]
                low_edge -= tol[1]
        low = None if low_k == math.inf else from_log(low_edge)
        return Judgement(
            bool(kind),
            low,
            from_log(high_edge),
            status,
            metric,
            value,
            confidence,
            basis,
            kind,
            from_log(centre),
            round(score, 3),
            round(shift, 3),
            limit,
            when,
            direction=direction,
            outside=score > point_k or -score > low_k,
        )
