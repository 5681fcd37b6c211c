"""Scheduled audits (CreateScheduledAudit): DAILY, WEEKLY on a day, BIWEEKLY on a day,
MONTHLY on a day of the month or LAST; at a time of day in UTC (default 03:00).

`due(now)` runs the audits whose time has come; `garrison-detect serve` calls it from its tick.
A run missed while the engine was down happens once when it is back (not once per missed
period); the next run is computed from the time it ran.
"""

import calendar
import datetime
import logging
import re
from typing import Any, Dict, List, Optional, Sequence

from garrison.detect.audit.store import AuditStore
from garrison.detect.audit.task import SCHEDULED, AuditError, AuditSources, check_names, notify, run_audit

log = logging.getLogger("garrison.audit")

FREQUENCIES = ("DAILY", "WEEKLY", "BIWEEKLY", "MONTHLY")
DAYS_OF_WEEK = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _utc(ms: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000.0, datetime.timezone.utc)


def _matches(doc: Dict[str, Any], day: datetime.date) -> bool:
    frequency = doc["frequency"]
    if frequency == "DAILY":
        return True
    if frequency in ("WEEKLY", "BIWEEKLY"):
        if DAYS_OF_WEEK[day.weekday()] != doc["dayOfWeek"]:
            return False
        if frequency == "BIWEEKLY" and doc.get("anchorDate"):
            return (day - datetime.date.fromisoformat(doc["anchorDate"])).days % 14 == 0
        return True
    last = calendar.monthrange(day.year, day.month)[1]
    wanted = doc["dayOfMonth"]
    return day.day == last if wanted == "LAST" else day.day == min(int(wanted), last)


def next_run(doc: Dict[str, Any], after: datetime.datetime) -> datetime.datetime:
    """The first scheduled moment strictly after `after`."""
    hour, minute = map(int, doc.get("timeOfDay", "03:00").split(":"))
    day = after.date()
    for _ in range(70):
        candidate = datetime.datetime(day.year, day.month, day.day, hour, minute, tzinfo=datetime.timezone.utc)
        if candidate > after and _matches(doc, day):
            return candidate
        day += datetime.timedelta(days=1)
    raise AuditError(f"scheduled audit {doc.get('scheduledAuditName')}: no run in the next 70 days")


def create(
    store: AuditStore,
    name: str,
    frequency: str,
    day_of_week: Optional[str] = None,
    day_of_month: Optional[str] = None,
    time_of_day: str = "03:00",
    checks: Sequence[str] = (),
    now_ms: int = 0,
) -> Dict[str, Any]:
    if not _NAME.fullmatch(name or ""):
        raise AuditError(f"scheduled audit name {name!r} is invalid: use 1-128 of a-z A-Z 0-9 _ -")
    frequency = (frequency or "").upper()
    if frequency not in FREQUENCIES:
        raise AuditError(f"frequency must be one of {', '.join(FREQUENCIES)}, got {frequency!r}")
    doc: Dict[str, Any] = {
        "scheduledAuditName": name,
        "frequency": frequency,
        "timeOfDay": time_of_day,
        "targetCheckNames": check_names(list(checks)),
    }
    if not _TIME.fullmatch(time_of_day or ""):
        raise AuditError(f"time of day must be HH:MM (UTC), got {time_of_day!r}")
    if frequency in ("WEEKLY", "BIWEEKLY"):
        day = (day_of_week or "").upper()[:3]
        if day not in DAYS_OF_WEEK:
            raise AuditError(f"{frequency} needs a day of the week ({', '.join(DAYS_OF_WEEK)})")
        doc["dayOfWeek"] = day
    elif day_of_week:
        raise AuditError(f"a day of the week is for WEEKLY and BIWEEKLY audits, not {frequency}")
    if frequency == "MONTHLY":
        value = (day_of_month or "").upper()
        if value != "LAST" and not (value.isdigit() and 1 <= int(value) <= 31):
            raise AuditError("MONTHLY needs a day of the month: 1-31 or LAST")
        doc["dayOfMonth"] = value
    elif day_of_month:
        raise AuditError(f"a day of the month is for MONTHLY audits, not {frequency}")
    first = next_run(doc, _utc(now_ms))
    if frequency == "BIWEEKLY":
        doc["anchorDate"] = first.date().isoformat()
    store.put_schedule(doc, int(first.timestamp() * 1000))
    return dict(doc, nextRunTime=first.timestamp())


def due(store: AuditStore, sources: AuditSources, now_ms: int, alerts: Any = None) -> List[Dict[str, Any]]:
    """Run every scheduled audit whose time has come; returns their tasks."""
    tasks = []
    for doc in store.schedules():
        if doc["nextRunTime"] * 1000 > now_ms:
            continue
        task_id = None
        try:
            result = run_audit(
                sources,
                doc.get("targetCheckNames") or None,
                store,
                SCHEDULED,
                doc["scheduledAuditName"],
                now=now_ms / 1000.0,
            )
            task_id = result["task"]["taskId"]
            tasks.append(result["task"])
            notify(alerts, result["task"])
        except Exception:  # a broken source must not stop the engine, nor re-run every tick
            log.exception("scheduled audit %s failed", doc["scheduledAuditName"])
        store.schedule_ran(
            doc["scheduledAuditName"], now_ms, int(next_run(doc, _utc(now_ms)).timestamp() * 1000), task_id
        )
    return tasks


class Scheduler:
    """What `serve` calls every tick: runs due scheduled audits at most every `every_s` seconds,
    with the sources of the engine config's [audit] table, and tells the engine's alert targets."""

    def __init__(self, engine: Any, every_s: float = 30.0):
        from garrison.detect.audit.task import sources_from_config

        self.engine = engine
        self.sources = sources_from_config(getattr(engine.config, "audit", None))
        self.store = engine.audit_store()
        self.every_ms = int(every_s * 1000)
        self._next_ms = 0

    def tick(self) -> List[Dict[str, Any]]:
        now_ms = self.engine.clock.now_ms()
        if now_ms < self._next_ms:
            return []
        self._next_ms = now_ms + self.every_ms
        return due(self.store, self.sources, now_ms, self.engine.alerts)
