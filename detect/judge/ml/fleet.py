"""The models of one (security profile, behavior), wired the way the engine uses them.

    models = BehaviorModels(config, states=<any MutableMapping thing -> bytes>)
    judgement = models.observe(thing, value, ts_ms, "HIGH", metric)   # judge, then learn
    models.maybe_rebuild_prior(now_ms)                                   # at the retrain cadence

`states` is where model state lives: a dict in memory, or a mapping over the engine's store
(one STATE_SIZE blob per thing). The fleet prior is rebuilt by streaming every state through a
FleetPriorBuilder; keep `prior.to_state()` next to the states to survive restarts.
"""

from typing import Dict, MutableMapping, Optional

from .config import MLConfig
from .model import Judgement, Model
from .prior import FleetPrior, FleetPriorBuilder


class BehaviorModels:
    def __init__(
        self,
        config: Optional[MLConfig] = None,
        states: Optional[MutableMapping[str, bytes]] = None,
        prior: Optional[FleetPrior] = None,
        prior_built_ms: int = 0,
    ):
        self.config = config or MLConfig()
        self.states: MutableMapping[str, bytes] = states if states is not None else {}
        self.prior = prior
        self.prior_built_ms = prior_built_ms

    def model(self, thing: str) -> Model:
        state = self.states.get(thing)
        return Model.new(self.config) if state is None else Model.from_state(state, self.config)

    def observe(self, thing: str, value: float, ts_ms: int, confidence: str, metric: str = "value") -> Judgement:
        """Judge one datapoint of `thing` (with the fleet prior), then learn it and store the state."""
        model = self.model(thing)
        judgement = model.judge(value, ts_ms, confidence, prior=self.prior, metric=metric)
        model.update(value, ts_ms, prior=self.prior)
        self.states[thing] = model.to_state()
        return judgement

    def status(self, thing: str, now_ms: int) -> str:
        return self.model(thing).status(now_ms)

    def training_summaries(self, now_ms: int) -> Dict[str, dict]:
        # (dbm-like stores hand keys back as bytes)
        return {
            thing.decode() if isinstance(thing, bytes) else thing: Model.from_state(
                state, self.config
            ).training_summary(now_ms)
            for thing, state in self.states.items()
        }

    def rebuild_prior(self, now_ms: int) -> Optional[FleetPrior]:
        builder = FleetPriorBuilder()
        for state in self.states.values():
            builder.add(Model.from_state(state, self.config))
        self.prior = builder.build() or self.prior  # an emptied fleet keeps the last prior
        self.prior_built_ms = now_ms
        return self.prior

    def maybe_rebuild_prior(self, now_ms: int) -> bool:
        """Rebuild when retrain_every_s has passed since the last build; True if it did."""
        if now_ms - self.prior_built_ms < self.config.retrain_every_s * 1000:
            return False
        self.rebuild_prior(now_ms)
        return True
