"""Each thing's latest accepted report, for the console's thing page (listening ports,
connections and, when the agent sends them, their owning processes).

One row per thing, replaced inside the report's transaction (the engine's hook next to the
audit's posture): the table stays the size of the fleet. Reports are bounded by the validator
(128 KB, capped lists), so a row is too. Created here with CREATE TABLE IF NOT EXISTS, like the
audit's tables, so garrison.detect.state.store's schema is untouched.
"""

import json
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import orjson

from garrison.detect.state.store import Store

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS latest_reports (thing TEXT PRIMARY KEY, time_ms INTEGER NOT NULL, report TEXT NOT NULL)"
)


def ensure_table(store: Store) -> None:
    """Create the table if needed (Store.create_tables remembers it once it exists for good; the
    engine settles it at start, outside any report's transaction)."""
    store.create_tables(_SCHEMA)


def record_latest_report(store: Store, thing: str, report_long: Mapping[str, Any], received_ms: int) -> None:
    """The engine's hook (inside the report's transaction)."""
    record_latest_reports(store, [(thing, received_ms, report_long)])


def record_latest_reports(store: Store, reports: Iterable[Tuple[str, int, Mapping[str, Any]]]) -> None:
    """(thing, received_ms, report) rows in one statement: a batch's (group commit)."""
    ensure_table(store)
    store._many(
        "INSERT INTO latest_reports VALUES (?, ?, ?) ON CONFLICT (thing) DO UPDATE "
        "SET time_ms = excluded.time_ms, report = excluded.report",
        [(thing, received_ms, _encode(report)) for thing, received_ms, report in reports],
    )


def _encode(report: Mapping[str, Any]) -> str:
    # orjson: a gateway's whole report is encoded here once per report, the stdlib took a tenth
    # of the ingest CPU doing it (docs/bench-burst.md)
    try:
        return orjson.dumps(report, default=str).decode()
    except TypeError:  # integers past 64 bits (the validator refuses them; kept as the stdlib writes them)
        return json.dumps(report, separators=(",", ":"), default=str)


def latest_report(store: Store, thing: str) -> Optional[Dict[str, Any]]:
    """{"time_ms", "report"} of the thing's latest accepted report, or None."""
    ensure_table(store)
    row = store._one("SELECT time_ms, report FROM latest_reports WHERE thing = ?", (thing,))
    return None if row is None else {"time_ms": row[0], "report": orjson.loads(row[1])}


def forget(store: Store, thing: str) -> None:
    ensure_table(store)
    store._exec("DELETE FROM latest_reports WHERE thing = ?", (thing,))
