"""ML Detect: learn each device's normal per metric, alarm on deviations, explain why.

Public API (stable; see docs/ml-detect.md):

    MLConfig(training_days=7, min_datapoints=1000, retrain_every_s=86400,
             expire_after_s=14*86400, tz_offset_s=0, ...)   # MLConfig.from_dict(section)
    model = Model.new(config)            # or Model.from_state(blob, config)
    j = model.judge(value, ts_ms, confidence="HIGH", prior=prior, metric="aws:all-bytes-out")
        # -> Judgement(anomalous, low, high, status, explanation, metric, value, confidence,
        #              basis, kind, expected, score, shift); j.as_dict() is JSON-ready
    model.update(value, ts_ms, prior=prior)   # learn it (after judging it)
    model.status(now_ms)                 # PENDING_BUILD | ACTIVE | EXPIRED
    model.training_summary(now_ms)       # modelStatus, datapointsCollectionPercentage, ...
    blob = model.to_state()              # STATE_SIZE bytes; from_state(blob) gives it back exactly
    prior = FleetPrior.from_models(models)   # or FleetPriorBuilder().add(m)... .build()
    prior.to_state() / FleetPrior.from_state(blob)
    supports(metric_id, value_type) -> bool
    BehaviorModels(config, states=mapping)   # one (profile, behavior): observe() = judge + learn
        .observe(thing, value, ts_ms, confidence, metric) -> Judgement
        .maybe_rebuild_prior(now_ms) / .rebuild_prior(now_ms) / .prior / .training_summaries(now_ms)
    model.teach(value, ts_ms, lasting=False)  # operator feedback: a benign datapoint becomes normal
    FleetEvents(config).note(thing, ts_ms, judgement.direction) / .active(direction)  # fleet events

One Model per (thing, security profile, behavior); one FleetPrior per (profile, behavior).
"""

from .config import (
    ACTIVE,
    CONFIDENCE_LEVELS,
    DEFAULT_BANDS,
    EXPIRED,
    MODEL_STATUSES,
    PENDING_BUILD,
    SUPPORTED_METRICS,
    MLConfig,
    MLConfigError,
    supports,
)
from .model import STATE_SIZE, Judgement, Model, from_log, to_log
from .prior import FleetPrior, FleetPriorBuilder
from .fleet import BehaviorModels
from .fleetevent import FleetEvents

__all__ = [
    "ACTIVE",
    "CONFIDENCE_LEVELS",
    "DEFAULT_BANDS",
    "EXPIRED",
    "MODEL_STATUSES",
    "PENDING_BUILD",
    "SUPPORTED_METRICS",
    "MLConfig",
    "MLConfigError",
    "supports",
    "STATE_SIZE",
    "Judgement",
    "Model",
    "from_log",
    "to_log",
    "FleetPrior",
    "FleetPriorBuilder",
    "BehaviorModels",
    "FleetEvents",
]
