"""The engine facade's hooks, as typed interfaces: what garrison.detect.engine.Engine calls on
the clock, the alert targets, the ML registry and the mitigation actions it is given.

Each production implementation satisfies its Protocol structurally (no inheritance needed):
clock: garrison.detect.clock.SystemClock / ManualClock; alerts: garrison.detect.respond.alerts
.AlertDispatcher (or one target); ml: garrison.detect.judge.mlbridge.MlRegistry; actions:
garrison.detect.respond.actions.Actions; runner: garrison.detect.respond.runner.ActionRunner.
Tests pass their own small objects of these shapes.
"""

from typing import Any, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Protocol, Tuple

# called on an alert worker's thread with (outcome, detail): "delivered" | "failed" | "dropped"
AlertDone = Callable[[str, str], None]


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds."""

    def now_ms(self) -> int:
        """Epoch milliseconds."""


class AlertSink(Protocol):
    """Where the engine hands alert messages after the commit (the outbox is drained into it).

    An implementation with a true `tracks_delivery` attribute reports each message's outcome
    through `done` and says with `has_room()` whether it can take more; otherwise a message counts
    as sent once `deliver` returns."""

    def deliver(self, message: Dict[str, Any], done: Optional[AlertDone] = None) -> Any: ...

    def has_room(self) -> bool: ...

    def close(self, timeout: float = 5.0) -> None: ...


class MlJudge(Protocol):
    """ML Detect: per-device models that judge mlDetectionConfig behaviors."""

    def judge(self, thing: str, profile: str, behavior: Any, value: Any, received_ms: int) -> Optional[Dict[str, Any]]:
        """{"anomalous": bool, "explanation": ..., ...}, or None while no model can judge."""

    def status(self, profile: str, behavior: str, now_ms: int) -> str:
        """PENDING_BUILD | ACTIVE | EXPIRED for the behavior."""

    def training_summaries(
        self, profile: str, behavior: Any, now_ms: int, members: Collection[str] = (), thing: Optional[str] = None
    ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """(the behavior's BehaviorModelTrainingSummary, one summary per thing)."""

    def rebuild_priors(self, behaviors: Iterable[Tuple[str, str]], now_ms: int) -> None:
        """Recompute the fleet priors of these (profile, behavior) pairs."""

    def feedback(self, record: Mapping[str, Any], state: str) -> str:
        """A violation was verified (FALSE_POSITIVE / BENIGN_POSITIVE teach the device's model)."""


class ActionRules(Protocol):
    """The configured mitigation actions that violation events trigger, run inside the event's
    transaction (they write pending entries the runner carries out)."""

    @property
    def rules(self) -> Mapping[str, Any]:
        """The configured rules by "profile/behavior" key (empty: no actions)."""

    def groups(self) -> List[str]:
        """Thing groups the actions use (the engine creates them at start)."""

    def run(self, store: Any, event: Any, now_ms: int) -> List[Dict[str, Any]]:
        """Run what `event` triggers; return the audit entries written."""


class ResponseRunner(Protocol):
    """What carries out pending actions outside the report's transaction (`serve` sets one)."""

    def wake(self) -> None:
        """There may be new pending actions: look now rather than at the next poll."""
