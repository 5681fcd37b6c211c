"""The points of a thing's metric chart: [{t (epoch s), v (number)}], the behavior's threshold
or learned band, and the violations to mark.

`metric_points` is the one place that knows where the values come from. When the engine keeps a
metric history (Engine.list_metric_values, AWS ListMetricValues) it reads that; until then, the
store's own record of what the behavior saw: the values of the thing's violation events (the
datapoint that raised an alarm, the one that cleared it) and each episode's last violating value.
A list-valued metric (ports, addresses) is plotted as its size.
"""

import json
from typing import Any, Dict, List, Optional

from garrison.detect.state.store import Store

MAX_POINTS = 2000


def numeric(value: Any) -> Optional[float]:
    """A plottable number from a metric value (AWS MetricValue dict, a number or a list)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple, set)):
        return float(len(value))
    if isinstance(value, dict):
        for key in ("count", "number"):
            if isinstance(value.get(key), (int, float)):
                return float(value[key])
        for key in ("ports", "cidrs", "numbers", "strings", "udpPorts", "tcpPorts"):
            if isinstance(value.get(key), list):
                return float(len(value[key]))
    return None


def metric_points(engine, thing: str, metric: str, profile: str, behavior: str, since_ms: int) -> Dict[str, Any]:
    """{"source", "points": [{t, v}]} oldest first."""
    history = getattr(engine, "list_metric_values", None)
    if history is not None:
        points: List[Dict[str, float]] = []
        token = None
        while len(points) < MAX_POINTS:
            page = history(thing, metric, start_s=since_ms / 1000.0, next_token=token)
            for datum in page.get("metricDatumList", []):
                v = numeric(datum.get("value"))
                if v is not None:
                    points.append({"t": float(datum["timestamp"]), "v": v})
            token = page.get("nextToken")
            if not token:
                break
        return {"source": "metric-history", "points": points}
    return {"source": "violation-events", "points": _violation_points(engine.store, thing, profile, behavior, since_ms)}


def _violation_points(store: Store, thing: str, profile: str, behavior: str, since_ms: int) -> List[Dict[str, float]]:
    seen: Dict[int, float] = {}
    for row in store._rows(
        "SELECT time_ms, metric_value, behavior FROM violation_events WHERE thing = ? AND profile = ? "
        "AND time_ms >= ? ORDER BY time_ms LIMIT ?",
        (thing, profile, since_ms, MAX_POINTS),
    ):
        if json.loads(row["behavior"]).get("name") == behavior and row["metric_value"] is not None:
            v = numeric(json.loads(row["metric_value"]))
            if v is not None:
                seen[row["time_ms"]] = v
    for row in store._rows(
        "SELECT last_ms, last_value FROM violations WHERE thing = ? AND profile = ? AND "
        "behavior_name = ? AND last_ms >= ? ORDER BY last_ms LIMIT ?",
        (thing, profile, behavior, since_ms, MAX_POINTS),
    ):
        v = numeric(json.loads(row["last_value"])) if row["last_value"] is not None else None
        if v is not None:
            seen.setdefault(row["last_ms"], v)
    return [{"t": t / 1000.0, "v": v} for t, v in sorted(seen.items())]


def threshold_of(store: Store, profile: str, behavior_doc: Dict[str, Any]) -> Dict[str, Any]:
    """{"value": number or None, "kind": "static" | "statistical" | "ml" | "set" | None, "label"}."""
    criteria = behavior_doc.get("criteria") or {}
    operator = criteria.get("comparisonOperator", "")
    if "mlDetectionConfig" in criteria:
        return {
            "value": None,
            "kind": "ml",
            "label": f"ML band ({criteria['mlDetectionConfig'].get('confidenceLevel')})",
        }
    if "statisticalThreshold" in criteria:
        known = store._one(
            "SELECT value FROM fleet_thresholds WHERE profile = ? AND behavior = ?", (profile, behavior_doc.get("name"))
        )
        value = known[0] if known else None
        return {
            "value": value,
            "kind": "statistical",
            "operator": operator,
            "label": f"{operator} {criteria['statisticalThreshold'].get('statistic')} = "
            f"{'n/a' if value is None else round(value, 3)}",
        }
    value = criteria.get("value") or {}
    number = numeric({k: value[k] for k in ("count", "number") if k in value}) if value else None
    if number is not None:
        return {"value": number, "kind": "static", "operator": operator, "label": f"{operator} {number:g}"}
    if value:
        return {
            "value": None,
            "kind": "set",
            "operator": operator,
            "label": f"{operator} {json.dumps(next(iter(value.values()), ''))[:60]}",
        }
    return {"value": None, "kind": None, "label": ""}


def ml_bands(store: Store, thing: str, profile: str, behavior: str, since_ms: int) -> List[Dict[str, float]]:
    """Learned bands recorded with ML violations ({t, low, high}), when the judgement gave them."""
    out = []
    for row in store._rows(
        "SELECT time_ms, additional_info, behavior FROM violation_events WHERE thing = ? AND "
        "profile = ? AND time_ms >= ? ORDER BY time_ms LIMIT ?",
        (thing, profile, since_ms, MAX_POINTS),
    ):
        info = json.loads(row["additional_info"]) if row["additional_info"] else {}
        if json.loads(row["behavior"]).get("name") == behavior and isinstance(info, dict):
            low, high = info.get("low"), info.get("high")
            if isinstance(low, (int, float)) and isinstance(high, (int, float)):
                out.append({"t": row["time_ms"] / 1000.0, "low": float(low), "high": float(high)})
    return out
