"""ML Detect behaviors in the engine: garrison.detect.judge.ml's models, their states kept in the engine's store.

One model per (profile, behavior, thing), one fleet prior per (profile, behavior), both in the
same SQLite file (tables ml_models, ml_priors) and written in the report's transaction, so a
model never learns a datapoint the engine did not commit. The engine asks `judge` for a verdict
on each datapoint of an mlDetectionConfig behavior and `rebuild_priors` on its fleet-statistics
schedule; `status` is the behavior's modelStatus (ACTIVE once any device's model is);
`training_summaries` is GetBehaviorModelTrainingSummaries for one behavior, per thing too.
A verdict carries the whole judgement (`additional_info`), for violationEventAdditionalInfo.

Fleet events: when many devices of one (profile, behavior) leave their bands the same way at once
(garrison.detect.judge.ml.FleetEvents), their datapoints get no verdict and ONE fleet notice is recorded instead:
a violation of the pseudo-thing FLEET_THING ("$fleet", no real thing name has a "$") on that
profile and behavior, in-alarm when the event starts and alarm-cleared when it is over; its
additional info says how many devices deviated, in which direction, and why. A lone device still
alarms. `feedback` is the verification hook: FALSE_POSITIVE / BENIGN_POSITIVE teach the device's
model (Model.teach); TRUE_POSITIVE guards it from ever learning the attack; UNKNOWN does nothing.
"""

import logging
import math
from collections import Counter
from collections.abc import MutableMapping
from typing import Any, Collection, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from garrison.detect.respond import violations
from garrison.detect.state.store import Store, loads

log = logging.getLogger("garrison.ml")

try:
    from garrison.detect.judge import ml
except ImportError:  # pragma: no cover - garrison.detect.judge.ml ships with the engine; tolerate a partial tree
    ml = None  # type: ignore[assignment]  # registry() checks it (mypy has no optional-module type)


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


FLEET_THING = "$fleet"
TEACHING_STATES = ("FALSE_POSITIVE", "BENIGN_POSITIVE")  # the datapoint was normal
GUARDING_STATES = ("TRUE_POSITIVE",)  # it was an attack: never learn it
LASTING_S = 1800  # a benign violation still open after this long is a new normal level


class MlRegistry:
    """The engine's `ml` hook (see garrison.detect.engine.Engine)."""

    def __init__(self, store: Store, config: Optional[Mapping[str, Any]] = None):
        self.store = store
        self.config = ml.MLConfig.from_dict(config) if config else ml.MLConfig()
        self._fleet: Dict[Tuple[str, str], "ml.FleetEvents"] = {}

    def _models(self, profile: str, behavior: str) -> "ml.BehaviorModels":
        prior, built_ms = None, 0
        stored = self.store.get_prior(profile, behavior)
        if stored is not None:
            blob, built_ms = stored
            prior = ml.FleetPrior.from_state(blob) if blob else None
        return ml.BehaviorModels(
            self.config, states=_StoredStates(self.store, profile, behavior), prior=prior, prior_built_ms=built_ms
        )

    def judge(self, thing: str, profile: str, behavior, value: Any, received_ms: int) -> Optional[Dict[str, Any]]:
        """Judge then learn one datapoint; None when there is no verdict (no model, no prior yet)."""
        if not isinstance(value, (int, float)) or not ml.supports(behavior.metric, behavior.spec.value_type):
            return None
        judgement = self._models(profile, behavior.name).observe(
            thing, float(value), received_ms, behavior.confidence_level, behavior.metric
        )
        if judgement.basis == "none":
            return None
        events = self._fleet.get((profile, behavior.name))
        if events is None:
            events = self._fleet[(profile, behavior.name)] = ml.FleetEvents(self.config)
        for change in events.note(thing, received_ms, judgement.direction):
            self._fleet_notice(change, events, profile, behavior, received_ms)
        if judgement.anomalous and events.active(judgement.direction):
            return None  # part of a fleet event: the fleet notice speaks for it
        return additional_info(judgement)

    def _fleet_notice(self, change: str, events: "ml.FleetEvents", profile: str, behavior, time_ms: int) -> None:
        """Raise (change "open") or clear ("close") the fleet notice of (profile, behavior)."""
        described = events.describe()
        info = {
            "fleetEvent": described,
            "metric": behavior.metric,
            "confidenceLevel": behavior.confidence_level,
            "explanation": (
                f"{described['devices']} of {described['devicesJudged']} devices under {profile} "
                f"reported {behavior.metric} {described['direction']} their learned normal bands "
                f"at the same time: a fleet-wide event (firmware update, maintenance, "
                f"outage?), one notice instead of an alarm per device"
            ),
        }
        opening = change == "open"
        violations.record_datapoint(
            self.store,
            FLEET_THING,
            profile,
            behavior.doc,
            transition=violations.IN_ALARM if opening else violations.ALARM_CLEARED,
            violating=opening,
            metric_value=described["devices"],
            time_ms=time_ms,
            additional_info=info,
        )
        log.warning(
            "fleet event on %s/%s %s: %s",
            profile,
            behavior.name,
            "started" if opening else "ended",
            info["explanation"],
        )

    def feedback(self, record: Mapping[str, Any], state: str) -> str:
        """A violation was verified: FALSE_POSITIVE or BENIGN_POSITIVE on an ML behavior teaches
        the device's model that its datapoint was normal (Model.teach: the band widens around that
        hour, or the new level is learned when the violation had lasted LASTING_S and is still
        open). TRUE_POSITIVE never teaches acceptance: it guards the model from learning datapoints
        as large as the attack (a recurring attack keeps alarming); UNKNOWN does nothing. Returns
        what changed ("band", "level", "guard") or "" (nothing)."""
        behavior = record.get("behavior") or {}
        criteria = behavior.get("criteria") or {}
        thing, name = record.get("thingName"), behavior.get("name")
        if (
            "mlDetectionConfig" not in criteria
            or not isinstance(thing, str)
            or not isinstance(name, str)  # neither has a model
            or thing == FLEET_THING
            or state not in TEACHING_STATES + GUARDING_STATES
        ):
            return ""
        profile = record["securityProfileName"]
        # The datapoints to teach: the one that raised the alarm (its in-alarm event) and, while
        # the violation is open, the latest violating one (an ended violation's record holds the
        # datapoint that cleared it, which was normal).
        points = [
            (loads(row["additional_info"]) or {}, row["time_ms"])
            for row in self.store.list_events(thing=thing, profile=profile)
            if row["violation_id"] == record.get("violationId") and row["event_type"] == violations.IN_ALARM
        ]
        latest = record.get("violationEventAdditionalInfo") or {}
        if record.get("active", True) and latest.get("anomalous") and record.get("lastViolationTime"):
            points.append((latest, int(record["lastViolationTime"] * 1000)))
        start_s = record.get("violationStartTime") or 0
        lasting = bool(record.get("active", True)) and (record.get("lastViolationTime") or 0) - start_s >= LASTING_S
        learned = ""
        with self.store.transaction():
            models = self._models(profile, name)
            if thing not in models.states:
                return ""
            model = models.model(thing)
            for info, at_ms in points:
                if isinstance(info.get("value"), (int, float)) and info.get("anomalous"):
                    learned = (
                        model.teach(float(info["value"]), int(at_ms), benign=state in TEACHING_STATES, lasting=lasting)
                        or learned
                    )
            if learned:
                models.states[thing] = model.to_state()
        log.info(
            "violation %s of %s (%s/%s) verified %s: the model learned %s",
            record.get("violationId"),
            thing,
            profile,
            name,
            state,
            {"band": "a wider band", "level": "a new level", "guard": "never to learn it"}.get(learned, "nothing"),
        )
        return learned

    def status(self, profile: str, behavior: str, now_ms: int) -> str:
        """ACTIVE when any device's model is, EXPIRED when all are, else PENDING_BUILD."""
        return _behavior_status(
            summary.get("modelStatus")
            for summary in self._models(profile, behavior).training_summaries(now_ms).values()
        )

    def training_summaries(
        self, profile: str, behavior, now_ms: int, members: Collection[str] = (), thing: Optional[str] = None
    ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """(the behavior's BehaviorModelTrainingSummary, one summary per thing).

        The behavior's summary has AWS's fields, aggregated over its device models (status as
        `status`; collection start: the earliest; collection percentage and last refresh: the
        highest), plus `modelStatusCounts` and `fleetPrior`. Per-thing summaries (our extension)
        cover the things with a model and the `members` the profile applies to (no model yet:
        PENDING_BUILD, 0 datapoints), or only `thing`; each adds `thingName`, `datapoints`,
        `seededFromFleet` and `basis`: what would judge the thing's next datapoint ("device",
        "device+fleet", "fleet", or "none": no verdict). Times in epoch seconds, as records."""
        models = self._models(profile, behavior.name)
        modelled = models.training_summaries(now_ms)
        names = sorted(set(modelled) | set(members))
        if thing is not None:
            names = [thing] if thing in names else []
        head = {"securityProfileName": profile, "behaviorName": behavior.name}
        per_thing = []
        for name in names:
            model = models.model(name)
            summary = _seconds_summary(model.training_summary(now_ms))
            basis = model.judge(0.0, now_ms, behavior.confidence_level, prior=models.prior).basis
            per_thing.append(dict(head, thingName=name, **summary, basis=basis))
        summaries = list(modelled.values())
        starts = [s["trainingDataCollectionStartDate"] for s in summaries if s["trainingDataCollectionStartDate"]]
        refreshes = [s["lastModelRefreshDate"] for s in summaries if s["lastModelRefreshDate"]]
        counts = Counter(s["modelStatus"] for s in summaries)
        prior = models.prior
        overall = dict(
            head,
            **{
                "trainingDataCollectionStartDate": min(starts) / 1000.0 if starts else None,
                "modelStatus": _behavior_status(counts),
                "datapointsCollectionPercentage": max(
                    (s["datapointsCollectionPercentage"] for s in summaries), default=0.0
                ),
                "lastModelRefreshDate": max(refreshes) / 1000.0 if refreshes else None,
                "metric": behavior.metric,
                "confidenceLevel": behavior.confidence_level,
                "modelStatusCounts": {status: counts.get(status, 0) for status in ml.MODEL_STATUSES},
                "fleetPrior": (
                    {"models": prior.models, "lastBuildDate": models.prior_built_ms / 1000.0}
                    if prior is not None
                    else None
                ),
            },
        )
        return overall, per_thing

    def rebuild_priors(self, behaviors: Iterable[Tuple[str, str]], now_ms: int) -> None:
        """Rebuild each (profile, behavior)'s fleet prior when its retrain period has passed."""
        for profile, behavior in behaviors:
            models = self._models(profile, behavior)
            if models.maybe_rebuild_prior(now_ms):
                self.store.put_prior(profile, behavior, models.prior.to_state() if models.prior else None, now_ms)
                log.info("rebuilt the fleet prior of %s/%s from %d models", profile, behavior, len(models.states))


def additional_info(judgement: "ml.Judgement") -> Dict[str, Any]:
    """The whole judgement for violationEventAdditionalInfo, with AWS's names where AWS has them
    (confidenceLevel, modelStatus): metric, value, the learned band low / high, expected, basis,
    kind, score, shift, limit, when, explanation. Non-finite numbers become null (JSON)."""
    data = judgement.as_dict()
    data["confidenceLevel"] = data.pop("confidence")
    data["modelStatus"] = data.pop("status")
    if not data.get("note"):
        data.pop("note", None)
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in data.items()
    }


def _behavior_status(statuses: Iterable[Optional[str]]) -> str:
    """ACTIVE when any device's model is, EXPIRED when all are, else PENDING_BUILD."""
    statuses = set(statuses)
    if ml.ACTIVE in statuses:
        return ml.ACTIVE
    if statuses == {ml.EXPIRED}:
        return ml.EXPIRED
    return ml.PENDING_BUILD


def _seconds_summary(summary: Mapping[str, Any]) -> Dict[str, Any]:
    """A model's training summary with its dates in epoch seconds (records' unit)."""
    out = dict(summary)
    for key in ("trainingDataCollectionStartDate", "lastModelRefreshDate"):
        if out.get(key) is not None:
            out[key] = out[key] / 1000.0
    return out


def registry(store: Store, config: Optional[Mapping[str, Any]] = None) -> Optional[MlRegistry]:
    """An MlRegistry, or None when garrison.detect.judge.ml is not available (ML behaviors stay PENDING_BUILD)."""
    if ml is None or not hasattr(ml, "BehaviorModels"):
        return None
    return MlRegistry(store, config)
