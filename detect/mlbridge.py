"""ML Detect behaviors in the engine: detect.ml's models, their states kept in the engine's store.

One model per (profile, behavior, thing), one fleet prior per (profile, behavior), both in the
same SQLite file (tables ml_models, ml_priors) and written in the report's transaction, so a
model never learns a datapoint the engine did not commit. The engine asks `judge` for a verdict
on each datapoint of an mlDetectionConfig behavior and `rebuild_priors` on its fleet-statistics
schedule; `status` is the behavior's modelStatus (ACTIVE once any device's model is).
"""
import logging
from collections.abc import MutableMapping
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from detect.store import Store

log = logging.getLogger("garrison.ml")

try:
    from detect import ml
except ImportError:  # pragma: no cover - detect.ml ships with the engine; tolerate a partial tree
    ml = None


class _StoredStates(MutableMapping):
    """thing -> model state bytes of one (profile, behavior), over the store (BehaviorModels' `states`)."""

    def __init__(self, store: Store, profile: str, behavior: str):
        self.store, self.profile, self.behavior = store, profile, behavior

    def __getitem__(self, thing: str) -> bytes:
        state = self.store.get_model(self.profile, self.behavior, thing)
        if state is None:
            raise KeyError(thing)
        return state

    def __setitem__(self, thing: str, state: bytes) -> None:
        self.store.put_model(self.profile, self.behavior, thing, state)

    def __delitem__(self, thing: str) -> None:
        if not self.store.delete_model(self.profile, self.behavior, thing):
            raise KeyError(thing)

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.model_things(self.profile, self.behavior))

    def __len__(self) -> int:
        return len(self.store.model_things(self.profile, self.behavior))


class MlRegistry:
    """The engine's `ml` hook (see detect.engine.Engine)."""

    def __init__(self, store: Store, config: Optional[Mapping[str, Any]] = None):
        self.store = store
        self.config = ml.MLConfig.from_dict(config) if config else ml.MLConfig()

    def _models(self, profile: str, behavior: str) -> "ml.BehaviorModels":
        prior, built_ms = None, 0
        stored = self.store.get_prior(profile, behavior)
        if stored is not None:
            blob, built_ms = stored
            prior = ml.FleetPrior.from_state(blob) if blob else None
        return ml.BehaviorModels(self.config, states=_StoredStates(self.store, profile, behavior),
                                 prior=prior, prior_built_ms=built_ms)

    def judge(self, thing: str, profile: str, behavior, value: Any, received_ms: int) -> Optional[Dict[str, Any]]:
        """Judge then learn one datapoint; None when there is no verdict (no model, no prior yet)."""
        if not isinstance(value, (int, float)) or not ml.supports(behavior.metric, behavior.spec.value_type):
            return None
        judgement = self._models(profile, behavior.name).observe(
            thing, float(value), received_ms, behavior.confidence_level, behavior.metric)
        if judgement.basis == "none":
            return None
        return {"anomalous": bool(judgement.anomalous), "explanation": judgement.explanation,
                "modelStatus": judgement.status}

    def status(self, profile: str, behavior: str, now_ms: int) -> str:
        """ACTIVE when any device's model is, EXPIRED when all are, else PENDING_BUILD."""
        statuses = {summary.get("modelStatus") for summary in
                    self._models(profile, behavior).training_summaries(now_ms).values()}
        if ml.ACTIVE in statuses:
            return ml.ACTIVE
        if statuses == {ml.EXPIRED}:
            return ml.EXPIRED
        return ml.PENDING_BUILD

    def rebuild_priors(self, behaviors: Iterable[Tuple[str, str]], now_ms: int) -> None:
        """Rebuild each (profile, behavior)'s fleet prior when its retrain period has passed."""
        for profile, behavior in behaviors:
            models = self._models(profile, behavior)
            if models.maybe_rebuild_prior(now_ms):
                self.store.put_prior(profile, behavior, models.prior.to_state() if models.prior else None, now_ms)
                log.info("rebuilt the fleet prior of %s/%s from %d models", profile, behavior, len(models.states))


def registry(store: Store, config: Optional[Mapping[str, Any]] = None) -> Optional[MlRegistry]:
    """An MlRegistry, or None when detect.ml is not available (ML behaviors stay PENDING_BUILD)."""
    if ml is None or not hasattr(ml, "BehaviorModels"):
        return None
    return MlRegistry(store, config)
