"""What the console's pages read: small, indexed queries over the engine's store.

The fleet page must stay quick with 10,000 things, so nothing here loads the whole fleet into
Python: filtering, counting and paging happen in SQLite, on the things primary key and the
indexes the store already has (violations_open, a partial index on open episodes;
group_members' primary key and group_members_thing; violation_events_time / _thing).

A thing's state: `in alarm` (an open violation), `quarantined` (a member of a quarantine group:
the groups the configured actions move things into, "quarantine" when none is configured),
`silent` (no report for `silent_after_s`, or never reported) and otherwise `online`.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from garrison.detect.state.store import Store, StoreRow

PAGE_SIZE = 50
STATES = ("online", "silent", "alarm", "quarantined")


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _aggregate(store: Store, sql: str, params: Sequence[Any] = ()) -> StoreRow:
    """The row of an aggregate query (COUNT, MAX): SQLite always returns exactly one."""
    row = store._one(sql, params)
    if row is None:
        raise RuntimeError(f"an aggregate query returned no row: {sql}")
    return row


def _group_marks(groups: Sequence[str]) -> str:
    return ",".join("?" * len(groups))


def fleet_counts(store: Store, now_ms: int, silent_after_s: float, quarantine: Sequence[str]) -> Dict[str, int]:
    """Things in total and per state (a thing in alarm is also online or silent)."""
    cutoff = now_ms - int(silent_after_s * 1000)
    row = _aggregate(  # CASE, not SUM of a comparison: PostgreSQL has no SUM(boolean)
        store,
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN last_received_ms >= ? THEN 1 ELSE 0 END), 0) FROM things",
        (cutoff,),
    )
    total, online = row[0], row[1]
    alarm = _aggregate(store, "SELECT COUNT(DISTINCT thing) FROM violations WHERE end_ms IS NULL")[0]
    quarantined = (
        _aggregate(
            store,
            f"SELECT COUNT(DISTINCT thing) FROM group_members WHERE group_name IN ({_group_marks(quarantine)})",
            tuple(quarantine),
        )[0]
        if quarantine
        else 0
    )
    return {"total": total, "online": online, "silent": total - online, "alarm": alarm, "quarantined": quarantined}


def fleet_page(
    store: Store,
    now_ms: int,
    silent_after_s: float,
    quarantine: Sequence[str],
    search: str = "",
    group: str = "",
    state: str = "",
    page: int = 0,
    size: int = PAGE_SIZE,
) -> Tuple[List[Dict[str, Any]], int]:
    """One page of things matching the filters, by name, and how many match in all."""
    cutoff = now_ms - int(silent_after_s * 1000)
    where: List[str] = []
    params: List[Any] = []
    if search:
        where.append("t.name LIKE ? ESCAPE '\\'")
        params.append(_like(search))
    if group:
        where.append("t.name IN (SELECT thing FROM group_members WHERE group_name = ?)")
        params.append(group)
    if state == "online":
        where.append("t.last_received_ms >= ?")
        params.append(cutoff)
    elif state == "silent":
        where.append("(t.last_received_ms IS NULL OR t.last_received_ms < ?)")
        params.append(cutoff)
    elif state == "alarm":
        where.append("EXISTS (SELECT 1 FROM violations v WHERE v.thing = t.name AND v.end_ms IS NULL)")
    elif state == "quarantined":
        where.append(
            f"t.name IN (SELECT thing FROM group_members WHERE group_name IN ({_group_marks(quarantine) or 'NULL'}))"
        )
        params.extend(quarantine)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    total = _aggregate(store, "SELECT COUNT(*) FROM things t" + clause, params)[0]
    rows = store._rows(
        "SELECT t.name, t.last_received_ms, t.reports, "
        "(SELECT COUNT(*) FROM violations v WHERE v.thing = t.name AND v.end_ms IS NULL) AS alarms, "
        "(SELECT group_concat(group_name, ',') FROM group_members g WHERE g.thing = t.name) AS groups "
        "FROM things t" + clause + " ORDER BY t.name LIMIT ? OFFSET ?",
        params + [size, max(page, 0) * size],
    )
    things = []
    for row in rows:
        groups = sorted(filter(None, (row["groups"] or "").split(",")))
        last = row["last_received_ms"]
        things.append(
            {
                "name": row["name"],
                "last_ms": last,
                "reports": row["reports"],
                "alarms": row["alarms"],
                "groups": groups,
                "quarantined": any(g in quarantine for g in groups),
                "online": last is not None and last >= cutoff,
            }
        )
    return things, total


def group_names(store: Store, limit: int = 1000) -> List[str]:
    """Group names for the filter (not their members: store.list_groups loads those)."""
    return [r[0] for r in store._rows("SELECT name FROM thing_groups ORDER BY name LIMIT ?", (limit,))]


def alarms_by_behavior(store: Store) -> List[Dict[str, Any]]:
    rows = store._rows(
        "SELECT profile, behavior_name, COUNT(*) AS n FROM violations WHERE end_ms IS NULL "
        "GROUP BY profile, behavior_name ORDER BY n DESC, profile, behavior_name LIMIT 200"
    )
    return [{"profile": r["profile"], "behavior": r["behavior_name"], "count": r["n"]} for r in rows]


def recent_events(
    store: Store, limit: int = 30, thing: Optional[str] = None, since_ms: Optional[int] = None
) -> List[Dict[str, Any]]:
    """The latest violation events, newest first."""
    where: List[str] = []
    params: List[Any] = []
    if thing:
        where.append("thing = ?")
        params.append(thing)
    if since_ms is not None:
        where.append("time_ms >= ?")
        params.append(since_ms)
    rows = store._rows(
        "SELECT seq, violation_id, event_type, time_ms, thing, profile, behavior, metric_value "
        "FROM violation_events" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC LIMIT ?",
        params + [limit],
    )
    return [
        {
            "seq": r["seq"],
            "violationId": r["violation_id"],
            "type": r["event_type"],
            "time_ms": r["time_ms"],
            "thing": r["thing"],
            "profile": r["profile"],
            "behavior": json.loads(r["behavior"]).get("name"),
            "value": _loads(r["metric_value"]),
        }
        for r in rows
    ]


def violations_page(
    store: Store,
    active: Optional[bool],
    thing: str = "",
    profile: str = "",
    behavior: str = "",
    verification: str = "",
    page: int = 0,
    size: int = PAGE_SIZE,
) -> Tuple[List[Dict[str, Any]], int]:
    """Violations (newest first) matching the filters, one page, and how many match."""
    where: List[str] = []
    params: List[Any] = []
    if active is True:
        where.append("end_ms IS NULL")
    elif active is False:
        where.append("end_ms IS NOT NULL")
    for column, value in (("thing", thing), ("profile", profile), ("behavior_name", behavior)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if verification == "UNVERIFIED":
        where.append("verification_state IS NULL")
    elif verification:
        where.append("verification_state = ?")
        params.append(verification)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    total = _aggregate(store, "SELECT COUNT(*) FROM violations" + clause, params)[0]
    rows = store._rows(
        "SELECT * FROM violations" + clause + " ORDER BY start_ms DESC, violation_id LIMIT ? OFFSET ?",
        params + [size, max(page, 0) * size],
    )
    return [violation_dict(r) for r in rows], total


def violation_dict(r) -> Dict[str, Any]:
    return {
        "violationId": r["violation_id"],
        "thing": r["thing"],
        "profile": r["profile"],
        "behavior": r["behavior_name"],
        "criteria": json.loads(r["behavior"]).get("criteria", {}),
        "metric": json.loads(r["behavior"]).get("metric"),
        "value": _loads(r["last_value"]),
        "start_ms": r["start_ms"],
        "last_ms": r["last_ms"],
        "end_ms": r["end_ms"],
        "end_type": r["end_type"],
        "verification": r["verification_state"],
        "verification_description": r["verification_description"],
        "info": _loads(r["additional_info"]),
    }


def recent_actions(store: Store, thing: str, limit: int = 10) -> List[Dict[str, Any]]:
    """The thing's latest mitigation actions (rules' and operators'), newest first."""
    rows = store._rows(
        "SELECT seq, time_ms, action, dry_run, outcome, detail FROM action_log WHERE thing = ? "
        "ORDER BY seq DESC LIMIT ?",
        (thing, limit),
    )
    return [
        {
            "seq": r["seq"],
            "time_ms": r["time_ms"],
            "action": _loads(r["action"]),
            "dryRun": bool(r["dry_run"]),
            "outcome": r["outcome"],
            "detail": r["detail"],
        }
        for r in rows
    ]


def change_mark(store: Store) -> str:
    """Changes whenever a report is accepted or a violation event is recorded (the live refresh)."""
    row = _aggregate(
        store,
        "SELECT (SELECT MAX(last_received_ms) FROM things), (SELECT MAX(seq) FROM violation_events), "
        "(SELECT COUNT(*) FROM things)",
    )
    return f"{row[0] or 0}-{row[1] or 0}-{row[2]}"


def _loads(text: Optional[str]) -> Any:
    return None if text is None else json.loads(text)
