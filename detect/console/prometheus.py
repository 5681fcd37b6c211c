"""GET /metrics: the engine in Prometheus' text format (prometheus-client), read at scrape time.

A custom collector asks the engine what it has when Prometheus scrapes, so nothing on the
report's hot path takes a lock or updates a metric object:
- reports accepted and rejected (by error code), dropped and duplicate: the Ingestor's `stats`
  Counter (garrison.detect.ingest.frontdoor), which serve hands over with `watch_ingest`;
- ingest latency and batch sizes: the same Counter's keys `latency_seconds_sum` /
  `latency_count` and `batches` / `batch_reports`, when the ingest path fills them (the group
  commit's worker does; absent keys are exported as 0);
- the ingest queue's depth: MqttIngest's bounded queue;
- dead letters kept and not kept (full) since the start: the counts of the MQTT path's
  DeadLetters (a directory) or of the NATS worker's DeadLetterCaps (the GARRISON_DEADLETTER stream);
- violations raised / cleared / invalidated by profile and behavior (CloudWatch's Violations,
  ViolationsCleared, ViolationsInvalidated): counted from the violation_events table, reading only
  the events added since the previous scrape (its primary key), so a scrape costs what arrived;
- active violations by profile and behavior, things by state (garrison.detect.console.queries),
  audit non-compliant resources by check (the latest audit task).

Who may read it: the API token's holders (Authorization: Bearer), or anyone when the operator
says so (`[api] metrics_public = true` or `serve --metrics-public`): Prometheus then needs no
token, but the address should be reachable only from where Prometheus runs.
"""

import json
import threading
import time
from typing import Any, Callable, Dict, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from garrison.detect.api.auth import token_matches
from garrison.detect.audit.store import LATEST_TASK
from garrison.detect.console import queries

EVENT_TYPES = {"in-alarm": "raised", "alarm-cleared": "cleared", "alarm-invalidated": "invalidated"}
SCAN_LIMIT = 50000  # events read per scrape at most (a first scrape over a long history catches up)


def watch_ingest(engine, ingestor, ingest=None) -> None:
    """serve's hook: where the collector finds the ingest counters and queue (`ingest`: an
    MqttIngest or a NatsIngest)."""
    engine.ingest_stats = ingestor.stats
    queue = getattr(ingest, "_queue", None)
    engine.ingest_queue_depth = (lambda: queue.qsize()) if queue is not None else None
    engine.ingest_dead_letters = getattr(ingest, "dead_letters", None)


class EngineCollector:
    def __init__(self, engine, silent_after_s: float, quarantine: Callable[[], Any]):
        self.engine, self.silent_after_s, self.quarantine = engine, silent_after_s, quarantine
        self._events: Dict[Tuple[str, str, str], int] = {}
        self._last_seq = 0
        self._lock = threading.Lock()

    def _event_counts(self) -> Dict[Tuple[str, str, str], int]:
        with self._lock:
            rows = self.engine.store._rows(
                "SELECT seq, event_type, profile, behavior FROM violation_events WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._last_seq, SCAN_LIMIT),
            )
            for row in rows:
                key = (
                    EVENT_TYPES.get(row["event_type"], row["event_type"]),
                    row["profile"],
                    json.loads(row["behavior"]).get("name", ""),
                )
                self._events[key] = self._events.get(key, 0) + 1
                self._last_seq = row["seq"]
            return dict(self._events)

    def collect(self):
        store = self.engine.store
        stats = getattr(self.engine, "ingest_stats", None) or {}
        reports = CounterMetricFamily(
            "garrison_reports", "Reports by outcome (rejected ones by error code).", labels=["outcome", "code"]
        )
        for key, value in sorted(stats.items()):
            if key in ("accepted", "dropped", "duplicate"):
                reports.add_metric([key, ""], value)
            elif key.startswith("rejected:"):
                reports.add_metric(["rejected", key.split(":", 1)[1]], value)
        if "accepted" not in stats:
            reports.add_metric(["accepted", ""], 0)
        yield reports
        yield SummaryMetricFamily(
            "garrison_ingest_latency_seconds",
            "Time from a report's arrival to its reply.",
            count_value=stats.get("latency_count", 0),
            sum_value=stats.get("latency_seconds_sum", 0.0),
        )
        yield SummaryMetricFamily(
            "garrison_ingest_batch_reports",
            "Reports per store transaction (group commit).",
            count_value=stats.get("batches", 0),
            sum_value=stats.get("batch_reports", 0),
        )
        depth = getattr(self.engine, "ingest_queue_depth", None)
        queue = GaugeMetricFamily("garrison_ingest_queue_depth", "Reports received and waiting for the engine.")
        queue.add_metric([], depth() if depth else 0)
        yield queue
        dead = getattr(self.engine, "ingest_dead_letters", None)
        letters = CounterMetricFamily(
            "garrison_dead_letters",
            "Reports set aside after failing again and again: kept, or not kept (the directory or stream was full).",
            labels=["outcome"],
        )
        letters.add_metric(["kept"], dead.kept if dead else 0)
        letters.add_metric(["dropped"], dead.dropped if dead else 0)
        yield letters

        events = CounterMetricFamily(
            "garrison_violation_events",
            "Violation events (Violations, ViolationsCleared, ViolationsInvalidated) by profile and behavior.",
            labels=["event", "profile", "behavior"],
        )
        for (event, profile, behavior), value in sorted(self._event_counts().items()):
            events.add_metric([event, profile, behavior], value)
        yield events
        active = GaugeMetricFamily(
            "garrison_active_violations", "Open violations by profile and behavior.", labels=["profile", "behavior"]
        )
        for item in queries.alarms_by_behavior(store):
            active.add_metric([item["profile"], item["behavior"]], item["count"])
        yield active

        counts = queries.fleet_counts(store, self.engine.clock.now_ms(), self.silent_after_s, self.quarantine())
        things = GaugeMetricFamily(
            "garrison_things", "Things by state (in alarm and quarantined overlap online/silent).", labels=["state"]
        )
        for state in ("online", "silent", "alarm", "quarantined"):
            things.add_metric([state], counts[state])
        yield things
        yield GaugeMetricFamily("garrison_things_total", "Registered things.", value=counts["total"])

        audit = GaugeMetricFamily(
            "garrison_audit_noncompliant_resources",
            "Non-compliant resources per check in the latest audit task.",
            labels=["check"],
        )
        for check, detail in sorted(_latest_audit(store).items()):
            audit.add_metric([check], detail.get("nonCompliantResourcesCount", 0))
        yield audit


def _latest_audit(store) -> Dict[str, Dict[str, Any]]:
    try:
        row = store._one(LATEST_TASK.format("doc"))
    except Exception:  # no audit has ever run: its tables do not exist yet
        return {}
    return json.loads(row[0]).get("auditDetails", {}) if row else {}


router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def metrics(request: Request):
    app = request.app
    if not (app.state.metrics_public or token_matches(request.headers.get("authorization", ""), app.state.token)):
        return JSONResponse(
            {
                "ErrorCode": "Unauthorized",
                "ErrorMessage": "a valid bearer token is required (or serve --metrics-public)",
            },
            status_code=401,
        )
    started = time.monotonic()
    body = generate_latest(app.state.metrics_registry)
    body += b"# garrison scrape took %.6f s\n" % (time.monotonic() - started)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app, engine, public: bool, silent_after_s: float, quarantine: Callable[[], Any]) -> None:
    registry = CollectorRegistry(auto_describe=False)
    if engine is not None:
        registry.register(EngineCollector(engine, silent_after_s, quarantine))
    app.state.metrics_registry, app.state.metrics_public = registry, public
    app.include_router(router)
