"""Judge one datapoint against one behavior: pure functions over a JSON-able state dict.

The engine keeps one state per (thing, profile, behavior), passes it in with each datapoint and
stores the state that comes back; nothing here does I/O or keeps state of its own (the CIDR
memo inside each parsed criterion aside).

Semantics follow AWS Device Defender: a behavior describes *normal*, so a datapoint violates
when it does not meet the criteria ("less-than 50": 50 or more violates; "in-port-set": an
allow-list; "not-in-cidr-set": a deny-list). An empty reported list always conforms and clears
an open alarm at once. Delta metrics (bytes/packets) are summed over `durationSeconds`; other
numeric metrics are gauges and the latest value is judged. `consecutiveDatapointsToAlarm`
violating datapoints in a row raise the alarm; `consecutiveDatapointsToClear` conforming ones
clear it.

State (all JSON types): {"alarm": bool, "violating": int, "conforming": int,
"window": [[received_ms, value], ...]} (window only for summed delta metrics).
"""

from typing import Any, Dict, NamedTuple, Optional

from garrison.detect.judge.metrics import MetricSpec

IN_ALARM = "in-alarm"
ALARM_CLEARED = "alarm-cleared"


class Outcome(NamedTuple):
    state: Dict[str, Any]
    violating: Optional[bool]  # None: no verdict (no datapoint, no threshold yet, retain-only)
    transition: Optional[str]  # "in-alarm" | "alarm-cleared" | None
    value: Any  # the value judged (e.g. the sum over the window)
    detail: Dict[str, Any]


def new_state() -> Dict[str, Any]:
    return {"alarm": False, "violating": 0, "conforming": 0}


# operator -> conforms(value, criterion): True when the datapoint meets the (normal) criteria.
_CONFORMS = {
    "less-than": lambda v, c: v < c,
    "less-than-equals": lambda v, c: v <= c,
    "greater-than": lambda v, c: v > c,
    "greater-than-equals": lambda v, c: v >= c,
    "in-port-set": lambda v, c: c.issuperset(v),
    "not-in-port-set": lambda v, c: c.isdisjoint(v),
    "in-set": lambda v, c: c.issuperset(v),
    "not-in-set": lambda v, c: c.isdisjoint(v),
    "in-cidr-set": lambda v, c: all(map(c.contains, v)),
    "not-in-cidr-set": lambda v, c: not any(map(c.contains, v)),
}


def conforms(operator: str, value: Any, criterion: Any) -> bool:
    """Whether `value` meets `operator criterion` (the behavior's idea of normal)."""
    return _CONFORMS[operator](value, criterion)


def _accumulate(behavior, state: Dict[str, Any], value: Any, received_ms: int):
    """The value to judge and the window to keep: sums delta metrics over durationSeconds."""
    start = received_ms - behavior.duration_seconds * 1000
    window = [entry for entry in state.get("window", ()) if start < entry[0] <= received_ms]
    window.append([received_ms, value])
    return sum(entry[1] for entry in window), window, start


def step(
    behavior,
    state: Optional[Dict[str, Any]],
    value: Any,
    received_ms: int,
    threshold: Optional[float] = None,
    verdict: Optional[bool] = None,
) -> Outcome:
    """Judge one datapoint of `behavior` (a garrison.detect.judge.profiles.Behavior).

    value: the extracted metric value; None means no datapoint (a copy of the state comes back).
    threshold: for statistical behaviors, the fleet percentile (garrison.detect.judge.fleetstats); None while
      there are too few devices: no verdict, alarm counters unchanged (the window still grows,
      and `value` is the judged value the engine should add to the fleet window).
    verdict: True/False from an ML model (garrison.detect.judge.ml), overriding the comparison; None: no verdict.
    """
    state = dict(state) if state else new_state()
    if value is None:
        return Outcome(state, None, None, None, {})
    detail: Dict[str, Any] = {}
    if behavior.duration_seconds and behavior.spec.delta:
        judged, window, start = _accumulate(behavior, state, value, received_ms)
        state["window"] = window
        detail["window"] = {"start_ms": start, "end_ms": received_ms, "datapoints": len(window)}
    else:
        judged = value

    kind = behavior.kind
    empty_list = type(judged) is list and not judged
    if verdict is not None:
        violating = bool(verdict)
        detail["verdict"] = violating
    elif kind == "rule":
        violating = not _CONFORMS[behavior.operator](judged, behavior.criterion)
    elif kind == "statistical":
        detail["statistic"] = behavior.statistic
        if threshold is None:
            return Outcome(state, None, None, judged, detail)
        detail["threshold"] = threshold
        violating = not _CONFORMS[behavior.operator](judged, threshold)
    else:  # ml without a verdict yet, or retain-only
        return Outcome(state, None, None, judged, detail)

    transition = None
    # streaks are capped where they stop mattering, so a steady state stops changing (and the
    # engine need not write it back after every report)
    if violating:
        count = state.get("violating", 0) + 1
        state["violating"] = min(count, behavior.consecutive_to_alarm)
        state["conforming"] = 0
        if count >= behavior.consecutive_to_alarm and not state.get("alarm"):
            state["alarm"] = True
            transition = IN_ALARM
    else:
        count = state.get("conforming", 0) + 1
        state["conforming"] = min(count, behavior.consecutive_to_clear)
        state["violating"] = 0
        if state.get("alarm") and (empty_list or count >= behavior.consecutive_to_clear):
            state["alarm"] = False
            transition = ALARM_CLEARED
    return Outcome(state, violating, transition, judged, detail)


def violation_value(spec: MetricSpec, value: Any) -> Optional[Dict[str, Any]]:
    """A value in AWS's MetricValue shape: {"count": n}, {"ports": [...]}, {"cidrs": [...]}, ..."""
    if value is None:
        return None
    if spec.value_type in ("count", "number"):
        return {spec.value_type: value}
    return {spec.value_type: sorted(value) if spec.value_type in ("ports", "cidrs") else list(value)}
