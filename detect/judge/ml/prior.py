"""The fleet prior: what a typical device under one (profile, behavior) looks like, so a device
is judged from its first datapoint instead of after a cold start of days.

It is the element-wise median, over a bounded random sample of trained device models, of their
daily shape, weekday offsets and scale, plus the median level and the spread of levels between
devices (1.4826 * MAD). A device with no data of its own is judged on the fleet band widened by
that spread; a new device's model is seeded with the fleet's shape at its first datapoint and
then learns its own.
"""

import math
import random
import statistics
import struct
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

_HOURS, _DAYS = 24, 7
_VERSION = 1
_PACK = struct.Struct("<BxxxIff%df%df%df" % (_HOURS, _DAYS, _HOURS))


class FleetPrior:
    """Immutable; build with FleetPrior.from_models() or FleetPriorBuilder."""

    __slots__ = ("level", "spread", "hour", "weekday", "scale", "models")

    def __init__(
        self,
        level: float,
        spread: float,
        hour: Sequence[float],
        weekday: Sequence[float],
        scale: Sequence[float],
        models: int,
    ):
        if len(hour) != _HOURS or len(weekday) != _DAYS or len(scale) != _HOURS:
            raise ValueError("fleet prior needs 24 hour values, 7 weekday values, 24 scales")
        self.level, self.spread, self.models = float(level), float(spread), int(models)
        self.hour, self.weekday, self.scale = tuple(hour), tuple(weekday), tuple(scale)

    def to_state(self) -> bytes:
        return _PACK.pack(_VERSION, self.models, self.level, self.spread, *self.hour, *self.weekday, *self.scale)

    @classmethod
    def from_state(cls, state: bytes) -> "FleetPrior":
        if len(state) != _PACK.size or state[0] != _VERSION:
            raise ValueError(f"fleet prior state: expected {_PACK.size} bytes of version {_VERSION}")
        values = _PACK.unpack(state)
        models, level, spread = values[1:4]
        rest = values[4:]
        return cls(level, spread, rest[:_HOURS], rest[_HOURS : _HOURS + _DAYS], rest[_HOURS + _DAYS :], models)

    def __eq__(self, other):
        return isinstance(other, FleetPrior) and self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]  # unhashable (compared by value); mypy wants a method

    def __repr__(self):
        return "FleetPrior(models=%d, level=%.3f, spread=%.3f)" % (self.models, self.level, self.spread)

    @classmethod
    def from_models(cls, models: Iterable["Model"], max_models: int = 1000, seed: int = 0) -> "Optional[FleetPrior]":
        builder = FleetPriorBuilder(max_models=max_models, seed=seed)
        for model in models:
            builder.add(model)
        return builder.build()


class FleetPriorBuilder:
    """Incremental aggregation for one (profile, behavior): add() every model (streamed from the
    store at each retrain), build() at the end. Memory is bounded by max_models (reservoir
    sample, seeded so rebuilds are reproducible). Models count when ACTIVE, or when they have
    seen config.warm_datapoints datapoints (so a brand-new fleet gets a prior after a day)."""

    def __init__(self, max_models: int = 1000, seed: int = 0):
        if max_models < 1:
            raise ValueError("max_models must be >= 1")
        self.max_models = max_models
        self._random = random.Random(seed)
        self._sample: List[tuple] = []
        self.seen = 0

    def add(self, model: "Model") -> bool:
        """Offer one model; returns whether it qualifies for the prior."""
        summary = model.summary_for_prior()
        if summary is None:
            return False
        self.seen += 1
        if len(self._sample) < self.max_models:
            self._sample.append(summary)
        else:
            slot = self._random.randrange(self.seen)
            if slot < self.max_models:
                self._sample[slot] = summary
        return True

    def build(self) -> Optional[FleetPrior]:
        if not self._sample:
            return None
        columns = list(zip(*self._sample))
        medians = [statistics.median(column) for column in columns]
        levels = columns[0]
        level = medians[0]
        mad = statistics.median(abs(x - level) for x in levels)
        spread = 1.4826 * mad
        hour = _centred(medians[1 : 1 + _HOURS])
        weekday = _centred(medians[1 + _HOURS : 1 + _HOURS + _DAYS])
        return FleetPrior(level, spread, hour, weekday, medians[1 + _HOURS + _DAYS :], self.seen)


def _centred(values: Sequence[float]) -> List[float]:
    mean = math.fsum(values) / len(values)
    return [v - mean for v in values]
