"""Metric history: what each thing reported (and what the broker saw), kept for ListMetricValues
and exported as Device Defender's metrics export.

Retained, per thing, for `metric_retention` (14 days by default, as AWS): every metric a behavior
of a profile that applies to the thing uses, plus the profile's `additionalMetricsToRetainV2`.
Each report is one row (thing, time, {metric: AWS MetricValue}), and so is each evaluation of the
broker's metrics for a thing; the sweep drops rows past the retention. A metric that several profiles retain is kept once.

`exportMetric: true` (on a behavior or an additionalMetricsToRetainV2 entry) with the profile's
`metricsExportConfig.mqttTopic` publishes the datapoints, batched, in AWS's metrics-export shape:
  {"version": "1.0", "metrics": [{"name": metric, "thing": thing, "value": {"count": 3},
   "version": 1, "timestamp": epoch ms, "dimension": {"name": ..., "operator": ...}}]}
Exports wait in a bounded in-memory queue (best effort: a datapoint the engine could not publish
before it stopped is not exported again; the history itself is in the database).
"""

import base64
import json
import logging
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from garrison.detect.judge import evaluate, metrics
from garrison.detect.judge.metrics import MetricError

log = logging.getLogger("garrison.history")

DEFAULT_RETENTION_S = 14 * 86400
MAX_RESULTS = 250  # ListMetricValues page size (AWS's maximum)
EXPORT_BATCH = 100  # metrics per export message
EXPORT_QUEUE = 100000  # exported datapoints waiting at most; the oldest are dropped beyond


class HistoryError(ValueError):
    """A bad ListMetricValues request."""


_RETAINED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # per parsed profile


def retained(profile) -> Dict[str, Tuple[Any, Optional[str]]]:
    """metric id -> (spec, export topic or None) that `profile` retains (computed once per
    parsed profile: the engine re-parses a profile only when it changes)."""
    known = _RETAINED.get(profile)
    if known is None:
        known = _RETAINED[profile] = _retained(profile)
    return known


def _retained(profile) -> Dict[str, Tuple[Any, Optional[str]]]:
    topic = (
        (profile.doc.get("metricsExportConfig") or {}).get("mqttTopic")
        if isinstance(profile.doc.get("metricsExportConfig"), Mapping)
        else None
    )
    topic = topic if isinstance(topic, str) and topic else None
    out: Dict[str, Tuple[Any, Optional[str]]] = {}
    for behavior in profile.behaviors:
        export = topic if behavior.export_metric else None
        known = out.get(behavior.metric)
        out[behavior.metric] = (behavior.spec, (known and known[1]) or export)
    for item in profile.additional_metrics:
        metric_id = item.get("metric")
        try:
            spec = out[metric_id][0] if metric_id in out else metrics.spec_for(metric_id)
        except MetricError:
            continue
        export = topic if item.get("exportMetric") is True else None
        known = out.get(metric_id)
        out[metric_id] = (spec, (known and known[1]) or export)
    return out


def extract_once(extracted: Dict[Any, Any], report: Mapping[str, Any], metric_id: str, spec: Any) -> Any:
    """metrics.extract, remembered in `extracted` (one report's): a gateway's destination list
    is built once for the behaviors and the history that both want it."""
    key = (metric_id, id(spec))
    if key not in extracted:
        extracted[key] = metrics.extract(report, metric_id, spec)
    return extracted[key]


class MetricHistory:
    def __init__(self, store, retention_s: float = DEFAULT_RETENTION_S):
        self.store = store
        self.retention_ms = int(retention_s * 1000)
        self._exports: Deque[Tuple[str, Dict[str, Any]]] = deque(maxlen=EXPORT_QUEUE)
        self._pending: Dict[Tuple[str, int], Dict[str, Any]] = {}
        self.dropped_exports = 0

    def record_report(
        self,
        thing: str,
        profiles: List[Any],
        report: Mapping[str, Any],
        received_ms: int,
        extracted: Optional[Dict[Any, Any]] = None,
    ) -> None:
        """Keep the report's values of every metric the thing's profiles retain (device-side and
        custom metrics; the broker's are recorded when they are computed), in one row.
        `extracted`: values the caller already extracted from this report (extract_once)."""
        values = self.report_values(thing, profiles, report, received_ms, extracted)
        if values:
            self.store.put_metric_values(thing, received_ms, "report", values)

    def report_values(
        self,
        thing: str,
        profiles: List[Any],
        report: Mapping[str, Any],
        received_ms: int,
        extracted: Optional[Dict[Any, Any]] = None,
    ) -> Optional[Dict[str, Any]]:
        """The row record_report keeps (None: nothing to keep), for a caller that writes a batch's
        rows at once (Store.put_metric_values_many); queues the report's exports."""
        if not self.retention_ms:
            return None  # metric_retention = 0: no history
        wanted: Dict[str, Tuple[Any, Optional[str]]] = {}
        for profile in profiles:
            for metric_id, (spec, topic) in retained(profile).items():
                if metric_id in metrics.CLOUD_METRICS:
                    continue
                known = wanted.get(metric_id)
                wanted[metric_id] = (spec, (known and known[1]) or topic)
        values = {}
        for metric_id, (spec, topic) in wanted.items():
            value = extract_once({} if extracted is None else extracted, report, metric_id, spec)
            if value is None:
                continue
            values[metric_id] = value = evaluate.violation_value(spec, value)
            if topic:
                self._export(
                    topic, {"name": metric_id, "thing": thing, "value": value, "version": 1, "timestamp": received_ms}
                )
        return values or None

    def record(
        self,
        thing: str,
        metric_id: str,
        value: Dict[str, Any],
        time_ms: int,
        export_topic: Optional[str] = None,
        dimension: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """One datapoint of the broker's metrics; kept in the row of (thing, time_ms) that
        `flush()` writes (one per thing per evaluation)."""
        if not self.retention_ms:
            return
        name = dimension.get("dimensionName", "") if dimension else ""
        operator = dimension.get("operator", "IN") if dimension else "IN"
        self._pending.setdefault((thing, time_ms), {})[_key(metric_id, name, operator)] = value
        if export_topic:
            entry = {"name": metric_id, "thing": thing, "value": value, "version": 1, "timestamp": time_ms}
            if dimension:
                entry["dimension"] = {"name": name, "operator": operator}
            self._export(export_topic, entry)

    def flush(self) -> None:
        """Write the broker datapoints `record` collected (call inside the evaluation's transaction)."""
        pending, self._pending = self._pending, {}
        for (thing, time_ms), values in pending.items():
            self.store.put_metric_values(thing, time_ms, "broker", values)

    def _export(self, topic: str, entry: Dict[str, Any]) -> None:
        if len(self._exports) == self._exports.maxlen:
            self.dropped_exports += 1  # the oldest waiting one goes
        self._exports.append((topic, entry))

    def flush_exports(self, publish: Optional[Callable[[str, bytes], Any]]) -> int:
        """Publish the waiting exports in batches of EXPORT_BATCH per topic; returns how many."""
        if publish is None or not self._exports:
            return 0
        by_topic: Dict[str, List[Dict[str, Any]]] = {}
        while self._exports:
            topic, entry = self._exports.popleft()
            by_topic.setdefault(topic, []).append(entry)
        sent = 0
        for topic, entries in by_topic.items():
            for i in range(0, len(entries), EXPORT_BATCH):
                batch = entries[i : i + EXPORT_BATCH]
                try:
                    publish(topic, json.dumps({"version": "1.0", "metrics": batch}, separators=(",", ":")).encode())
                    sent += len(batch)
                except Exception as exc:
                    log.warning("metrics export to %s failed (%s); %d datapoints not exported", topic, exc, len(batch))
        return sent

    def prune(self, now_ms: int) -> int:
        return self.store.prune_metric_values(now_ms - self.retention_ms)

    def list_values(
        self,
        thing: str,
        metric: str,
        start_s: Optional[float] = None,
        end_s: Optional[float] = None,
        dimension_name: Optional[str] = None,
        dimension_operator: Optional[str] = None,
        max_results: Optional[int] = None,
        next_token: Optional[str] = None,
    ) -> Dict[str, Any]:
        """ListMetricValues: {"metricDatumList": [{"timestamp": s, "value": MetricValue}], "nextToken"}."""
        if not isinstance(thing, str) or not thing or not isinstance(metric, str) or not metric:
            raise HistoryError("thingName and metricName are required")
        if dimension_operator not in (None, "IN", "NOT_IN"):
            raise HistoryError(f"dimensionValueOperator must be IN or NOT_IN, got {dimension_operator!r}")
        limit = MAX_RESULTS if max_results is None else max_results
        if not isinstance(limit, int) or not 1 <= limit <= MAX_RESULTS:
            raise HistoryError(f"maxResults must be 1-{MAX_RESULTS}, got {max_results!r}")
        start_ms = 0 if start_s is None else int(start_s * 1000)
        end_ms = 2**62 if end_s is None else int(end_s * 1000)
        after = _decode_token(next_token) if next_token else None
        rows = self.store.metric_values(
            thing, _key(metric, dimension_name or "", dimension_operator or "IN"), start_ms, end_ms, after, limit + 1
        )
        page = rows[:limit]
        out: Dict[str, Any] = {"metricDatumList": [{"timestamp": t / 1000.0, "value": v} for t, v in page]}
        if len(rows) > limit:
            out["nextToken"] = _encode_token(page[-1][0])
        return out


def _key(metric: str, dimension: str, operator: str) -> str:
    """A datapoint's key in its row: the metric, with "|dimension" (and "|NOT_IN") when it has one."""
    if not dimension:
        return metric
    return f"{metric}|{dimension}" + ("|NOT_IN" if operator == "NOT_IN" else "")


def _encode_token(time_ms: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": time_ms}).encode()).decode()


def _decode_token(token: str) -> int:
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
        if isinstance(after, int):
            return after
    except (ValueError, KeyError, TypeError):
        pass
    raise HistoryError("nextToken is not one this engine gave")
