"""Audit state in the engine's database (SQLite or PostgreSQL), in tables of its own: tasks, findings,
suppressions, scheduled audits, and each thing's latest posture.

Tables are created here with CREATE TABLE IF NOT EXISTS (garrison.detect.state.store's schema is untouched),
in the SQL both backends share (SQLite, PostgreSQL). Tasks and findings carry a `seq` (their order
of saving) that listings sort by; tables from before it get the column when first opened (_add_seq).
Tasks and their findings are kept for 90 days, as AWS keeps audit results.
"""

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from garrison.detect.state.store import NotFound, Store, StoreError, is_postgres

RETENTION_MS = 90 * 86400 * 1000
POSTURE_PREFIX = "posture:"
# the latest task: the last started, of those the last saved (both backends; NULLs, rows from
# before `seq` on PostgreSQL, sort as the oldest as they do on SQLite)
LATEST_TASK = "SELECT {} FROM audit_tasks ORDER BY start_ms DESC, COALESCE(seq, 0) DESC LIMIT 1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_tasks (
    task_id TEXT PRIMARY KEY, task_type TEXT NOT NULL, task_status TEXT NOT NULL,
    start_ms INTEGER NOT NULL, scheduled_name TEXT, doc TEXT NOT NULL, seq INTEGER);
CREATE INDEX IF NOT EXISTS audit_tasks_start ON audit_tasks (start_ms);
CREATE TABLE IF NOT EXISTS audit_findings (
    finding_id TEXT PRIMARY KEY, task_id TEXT NOT NULL REFERENCES audit_tasks(task_id) ON DELETE CASCADE,
    check_name TEXT NOT NULL, resource_key TEXT NOT NULL, doc TEXT NOT NULL, seq INTEGER);
CREATE INDEX IF NOT EXISTS audit_findings_task ON audit_findings (task_id, check_name);
CREATE TABLE IF NOT EXISTS audit_suppressions (
    check_name TEXT NOT NULL, resource_key TEXT NOT NULL, expiration_ms INTEGER, description TEXT,
    created_ms INTEGER NOT NULL, PRIMARY KEY (check_name, resource_key));
CREATE TABLE IF NOT EXISTS audit_schedules (
    name TEXT PRIMARY KEY, doc TEXT NOT NULL, next_ms INTEGER NOT NULL, last_ms INTEGER, last_task_id TEXT);
CREATE TABLE IF NOT EXISTS audit_posture (
    thing TEXT PRIMARY KEY, time_ms INTEGER NOT NULL, metrics TEXT NOT NULL);
"""
# listings sort by seq; the indexes are created after the column is (_add_seq)
_SEQ_INDEXES = (
    "CREATE INDEX IF NOT EXISTS audit_tasks_seq ON audit_tasks (seq); "
    "CREATE INDEX IF NOT EXISTS audit_findings_seq ON audit_findings (seq)"
)
_SEQ_INDEX_NAMES = ("audit_tasks_seq", "audit_findings_seq")
# PostgreSQL numbers saves from a sequence: its transactions (REPEATABLE READ) do not see each
# other's uncommitted rows, so two processes saving at once would read the same MAX(seq). Made
# once, under the schema lock, starting past the rows saved before it existed.
_SEQUENCE_PG = (
    "CREATE SEQUENCE IF NOT EXISTS audit_seq; "
    "SELECT setval('audit_seq', GREATEST((SELECT last_value FROM audit_seq), "
    "(SELECT COALESCE(MAX(seq), 0) FROM audit_tasks), (SELECT COALESCE(MAX(seq), 0) FROM audit_findings), 1))"
)
# tables created before `seq` existed get it (PostgreSQL; SQLite has no ADD COLUMN IF NOT EXISTS: _add_seq)
_ADD_SEQ_PG = (
    "ALTER TABLE audit_tasks ADD COLUMN IF NOT EXISTS seq INTEGER; "
    "ALTER TABLE audit_findings ADD COLUMN IF NOT EXISTS seq INTEGER; " + _SEQ_INDEXES
)


class AuditStore:
    """Audit records over a garrison.detect.state.store.Store (same connection, same transactions)."""

    def __init__(self, store: Store):
        self.store = store
        first = _SCHEMA not in store._settled_ddl
        store.create_tables(_SCHEMA)  # a set lookup once the tables exist (Store.create_tables)
        if first:  # once per Store (the engine's report hook builds an AuditStore per report)
            self._add_seq()

    def _add_seq(self) -> None:
        """Give audit tables from before `seq` the column. Old SQLite rows take their rowid (the
        order they were listed in before); old PostgreSQL rows, which could not be listed, sort first."""
        if is_postgres(self.store.path):
            # the indexes are made after the columns, in one transaction: there, nothing to do
            # (ALTER TABLE would lock the tables against the workers' posture writes)
            def missing(*names: str) -> bool:
                found = [self.store._one("SELECT to_regclass(?)", (name,)) for name in names]
                return any(row is None or row[0] is None for row in found)

            if missing(*_SEQ_INDEX_NAMES):
                self.store.create_tables(_ADD_SEQ_PG)
            if missing("audit_seq"):
                self.store.create_tables(_SEQUENCE_PG)
            return
        with self.store.transaction():
            for table in ("audit_tasks", "audit_findings"):
                if "seq" not in [r["name"] for r in self.store._rows(f"PRAGMA table_info({table})")]:
                    self.store._exec(f"ALTER TABLE {table} ADD COLUMN seq INTEGER")
                    self.store._exec(f"UPDATE {table} SET seq = rowid")
            for statement in _SEQ_INDEXES.split("; "):
                self.store._exec(statement)

    def _next_seqs(self, table: str, count: int) -> List[int]:
        """`count` increasing seqs for new rows of `table`, past every row saved before (SQLite's
        write lock serializes saves; PostgreSQL: the audit_seq sequence)."""
        if is_postgres(self.store.path):
            rows = self.store._rows("SELECT nextval('audit_seq') FROM generate_series(1, ?)", (count,))
            return sorted(int(r[0]) for r in rows)
        row = self.store._one(f"SELECT COALESCE(MAX(seq), 0) FROM {table}")
        first = int(row[0]) + 1 if row else 1
        return list(range(first, first + count))

    # ---- tasks and findings -------------------------------------------------------------------

    def save_task(self, task: Dict[str, Any], findings: List[Dict[str, Any]], resource_keys: List[str]) -> None:
        with self.store.transaction():
            self.store._exec(
                "INSERT INTO audit_tasks (task_id, task_type, task_status, start_ms, scheduled_name, doc, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    task["taskId"],
                    task["taskType"],
                    task["taskStatus"],
                    int(task["taskStartTime"] * 1000),
                    task.get("scheduledAuditName"),
                    json.dumps(task),
                    self._next_seqs("audit_tasks", 1)[0],
                ),
            )
            seqs = self._next_seqs("audit_findings", len(findings)) if findings else []
            rows = [
                (item["findingId"], item["taskId"], item["checkName"], key, json.dumps(item), seq)
                for seq, item, key in zip(seqs, findings, resource_keys)
            ]
            if rows:
                self.store._many(
                    "INSERT INTO audit_findings (finding_id, task_id, check_name, resource_key, doc, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            cutoff = int(task["taskStartTime"] * 1000) - RETENTION_MS
            old = [r[0] for r in self.store._rows("SELECT task_id FROM audit_tasks WHERE start_ms < ?", (cutoff,))]
            for task_id in old:
                self.store._exec("DELETE FROM audit_findings WHERE task_id = ?", (task_id,))
                self.store._exec("DELETE FROM audit_tasks WHERE task_id = ?", (task_id,))

    def get_task(self, task_id: str) -> Dict[str, Any]:
        row = self.store._one("SELECT doc FROM audit_tasks WHERE task_id = ?", (task_id,))
        if row is None:
            raise NotFound(f"no audit task {task_id}")
        return json.loads(row[0])

    def list_tasks(self, task_type: Optional[str] = None, limit: int = 1000) -> List[Dict[str, Any]]:
        sql, params = "SELECT doc FROM audit_tasks", []
        if task_type:
            sql, params = sql + " WHERE task_type = ?", [task_type]
        rows = self.store._rows(sql + " ORDER BY start_ms DESC, COALESCE(seq, 0) DESC LIMIT ?", params + [limit])
        return [json.loads(r[0]) for r in rows]

    def findings(
        self, task_id: Optional[str] = None, check: Optional[str] = None, limit: int = 10000
    ) -> List[Dict[str, Any]]:
        where, params = [], []
        if task_id:
            where.append("task_id = ?")
            params.append(task_id)
        if check:
            where.append("check_name = ?")
            params.append(check)
        sql = "SELECT doc FROM audit_findings" + (" WHERE " + " AND ".join(where) if where else "")
        return [
            json.loads(r[0])
            for r in self.store._rows(sql + " ORDER BY COALESCE(seq, 0), finding_id LIMIT ?", params + [limit])
        ]

    def latest_task_id(self) -> Optional[str]:
        row = self.store._one(LATEST_TASK.format("task_id"))
        return row[0] if row else None

    # ---- suppressions -------------------------------------------------------------------------

    def suppress(
        self, check: str, resource_key: str, expiration_ms: Optional[int], description: str, now_ms: int
    ) -> None:
        self.store._exec(
            "INSERT INTO audit_suppressions VALUES (?, ?, ?, ?, ?) ON CONFLICT (check_name, resource_key) "
            "DO UPDATE SET expiration_ms = excluded.expiration_ms, description = excluded.description, "
            "created_ms = excluded.created_ms",
            (check, resource_key, expiration_ms, description, now_ms),
        )

    def unsuppress(self, check: str, resource_key: str) -> bool:
        cur = self.store._exec(
            "DELETE FROM audit_suppressions WHERE check_name = ? AND resource_key = ?", (check, resource_key)
        )
        return cur.rowcount > 0

    def suppressions(self, now_ms: Optional[int] = None) -> List[Dict[str, Any]]:
        rows = self.store._rows("SELECT * FROM audit_suppressions ORDER BY check_name, resource_key")
        out = []
        for r in rows:
            if now_ms is not None and r["expiration_ms"] is not None and r["expiration_ms"] <= now_ms:
                continue
            out.append(
                {
                    "checkName": r["check_name"],
                    "resourceKey": r["resource_key"],
                    "expirationDate": None if r["expiration_ms"] is None else r["expiration_ms"] / 1000.0,
                    "suppressIndefinitely": r["expiration_ms"] is None,
                    "description": r["description"],
                }
            )
        return out

    # ---- scheduled audits ---------------------------------------------------------------------

    def put_schedule(self, doc: Dict[str, Any], next_ms: int) -> bool:
        """Create (True) or refuse a duplicate name (StoreError)."""
        added = self.store._exec(
            "INSERT INTO audit_schedules (name, doc, next_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (doc["scheduledAuditName"], json.dumps(doc), next_ms),
        )
        if added.rowcount != 1:
            raise StoreError(f"a scheduled audit named {doc['scheduledAuditName']!r} exists")
        return True

    def delete_schedule(self, name: str) -> None:
        if self.store._exec("DELETE FROM audit_schedules WHERE name = ?", (name,)).rowcount == 0:
            raise NotFound(f"no scheduled audit {name}")

    def schedules(self) -> List[Dict[str, Any]]:
        rows = self.store._rows("SELECT * FROM audit_schedules ORDER BY name")
        return [
            dict(
                json.loads(r["doc"]),
                nextRunTime=r["next_ms"] / 1000.0,
                lastRunTime=None if r["last_ms"] is None else r["last_ms"] / 1000.0,
                lastTaskId=r["last_task_id"],
            )
            for r in rows
        ]

    def schedule_ran(self, name: str, ran_ms: int, next_ms: int, task_id: Optional[str]) -> None:
        self.store._exec(
            "UPDATE audit_schedules SET last_ms = ?, next_ms = ?, last_task_id = ? WHERE name = ?",
            (ran_ms, next_ms, task_id, name),
        )

    # ---- posture ------------------------------------------------------------------------------

    def put_posture(self, thing: str, time_ms: int, metrics: Mapping[str, Any]) -> None:
        self.put_postures([(thing, time_ms, metrics)])

    def put_postures(self, rows: Iterable[Tuple[str, int, Mapping[str, Any]]]) -> None:
        """put_posture for (thing, time_ms, metrics) rows in one statement (a batch's)."""
        self.store._many(
            "INSERT INTO audit_posture VALUES (?, ?, ?) ON CONFLICT (thing) DO UPDATE SET "
            "time_ms = excluded.time_ms, metrics = excluded.metrics",
            [(thing, time_ms, json.dumps(metrics)) for thing, time_ms, metrics in rows],
        )

    def postures(self) -> Dict[str, Dict[str, Any]]:
        return {
            r["thing"]: {"time_ms": r["time_ms"], "metrics": json.loads(r["metrics"])}
            for r in self.store._rows("SELECT * FROM audit_posture")
        }


def posture_of(report_long: Mapping[str, Any]) -> Dict[str, Any]:
    """The report's posture metrics (custom metrics named posture:*), maybe none."""
    custom = report_long.get("custom_metrics") or {}
    return {name: value for name, value in custom.items() if name.startswith(POSTURE_PREFIX)}


def record_posture(store: Store, thing: str, report_long: Mapping[str, Any], received_ms: int) -> None:
    """The engine's hook (inside the report's transaction): keep the posture metrics of the
    latest report that has any."""
    posture = posture_of(report_long)
    if posture:
        AuditStore(store).put_posture(thing, received_ms, posture)


def record_postures(store: Store, rows: Iterable[Tuple[str, int, Mapping[str, Any]]]) -> None:
    """The posture metrics of a batch's reports, (thing, received_ms, posture) with the latest per
    thing, in one statement (Engine.batch writes them with the batch)."""
    AuditStore(store).put_postures(rows)
