"""The engine's state in one SQLite file (WAL mode).

Everything the engine must not lose lives here: things and their last report, thing groups,
security profiles and their attachments, per (profile, behavior, thing) evaluation state,
violations and their event history, fleet-statistics samples and thresholds, the alert outbox
and the audit log of mitigation actions. Times are stored as epoch milliseconds (integers);
the AWS-shaped records convert them (see garrison.detect.respond.violations).

One connection per Store, shared by the engine's threads behind a re-entrant lock;
`transaction()` wraps a unit of work in BEGIN IMMEDIATE ... COMMIT so a report is applied
entirely or not at all (a kill -9 leaves the last committed state). Other processes (the CLI)
open their own Store on the same file: WAL lets them read and write while `serve` runs.

Every table is keyed by thing name where a thing is involved, so the state can be split across
workers by thing (see docs/detect.md, "Partitioning").

`Store(dsn)` with a `postgresql://` URL opens the same schema on PostgreSQL instead
(garrison.detect.state.postgres, the scale-out deployment: docs/scale-out.md). The SQL here is
the dialect both agree on (INSERT ... ON CONFLICT, RETURNING, `?` placeholders); the PostgreSQL
backend translates the placeholders and the DDL's types. Schema changes are MIGRATIONS, applied
in order by both backends and counted in meta.schema_version.
"""

import json
import sqlite3
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Protocol, Sequence, Set, Tuple, Union

import orjson

SCHEMA_VERSION = 1
# version -> the SQL that takes the schema from version - 1 to it (both dialects; see _migrate)
MIGRATIONS: Dict[int, str] = {}
MAX_PROFILES_PER_TARGET = 5
BUSY_TIMEOUT_MS = 15000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY,
    registered_ms INTEGER NOT NULL,
    pre_registered INTEGER NOT NULL DEFAULT 0,
    last_report_id INTEGER,
    last_received_ms INTEGER,
    reports INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS thing_groups (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS group_members (
    group_name TEXT NOT NULL REFERENCES thing_groups(name) ON DELETE CASCADE,
    thing TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY (group_name, thing)
);
CREATE INDEX IF NOT EXISTS group_members_thing ON group_members(thing);
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    profile TEXT NOT NULL REFERENCES profiles(name) ON DELETE CASCADE,
    target TEXT NOT NULL,
    PRIMARY KEY (profile, target)
);
CREATE INDEX IF NOT EXISTS attachments_target ON attachments(target);
CREATE TABLE IF NOT EXISTS eval_state (
    thing TEXT NOT NULL,
    profile TEXT NOT NULL,
    behavior TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (thing, profile, behavior)
);
CREATE TABLE IF NOT EXISTS violations (
    violation_id TEXT PRIMARY KEY,
    thing TEXT NOT NULL,
    profile TEXT NOT NULL,
    behavior_name TEXT NOT NULL,
    behavior TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    last_value TEXT,
    last_ms INTEGER NOT NULL,
    verification_state TEXT,
    verification_description TEXT,
    additional_info TEXT,
    end_ms INTEGER,
    end_type TEXT
);
-- at most one open episode per (thing, profile, behavior)
CREATE UNIQUE INDEX IF NOT EXISTS violations_open
    ON violations(thing, profile, behavior_name) WHERE end_ms IS NULL;
CREATE INDEX IF NOT EXISTS violations_thing ON violations(thing, start_ms);
CREATE TABLE IF NOT EXISTS violation_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    violation_id TEXT NOT NULL REFERENCES violations(violation_id),
    event_type TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    thing TEXT NOT NULL,
    profile TEXT NOT NULL,
    behavior TEXT NOT NULL,
    metric_value TEXT,
    additional_info TEXT,
    suppress_alerts INTEGER NOT NULL DEFAULT 0,
    alerted_ms INTEGER,
    -- an episode has one start and one end: a replayed report cannot duplicate an event
    UNIQUE (violation_id, event_type)
);
CREATE INDEX IF NOT EXISTS violation_events_time ON violation_events(time_ms);
CREATE INDEX IF NOT EXISTS violation_events_thing ON violation_events(thing, time_ms);
CREATE INDEX IF NOT EXISTS violation_events_outbox ON violation_events(alerted_ms) WHERE alerted_ms IS NULL;
-- alerts given up after their last attempt (alerted_ms is set too: they leave the outbox)
CREATE TABLE IF NOT EXISTS alert_failures (
    seq INTEGER PRIMARY KEY REFERENCES violation_events(seq) ON DELETE CASCADE,
    failed_ms INTEGER NOT NULL,
    detail TEXT NOT NULL
);
-- each device's latest judged value per statistical behavior (the population of garrison.detect.judge.fleetstats)
CREATE TABLE IF NOT EXISTS fleet_samples (
    profile TEXT NOT NULL,
    behavior TEXT NOT NULL,
    thing TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (profile, behavior, thing)
);
CREATE TABLE IF NOT EXISTS fleet_thresholds (
    profile TEXT NOT NULL,
    behavior TEXT NOT NULL,
    value REAL,
    devices INTEGER NOT NULL,
    computed_ms INTEGER NOT NULL,
    PRIMARY KEY (profile, behavior)
);
-- ML Detect (garrison.detect.judge.ml): one model state per (profile, behavior, thing), one fleet prior per behavior
CREATE TABLE IF NOT EXISTS ml_models (
    profile TEXT NOT NULL,
    behavior TEXT NOT NULL,
    thing TEXT NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (profile, behavior, thing)
);
CREATE TABLE IF NOT EXISTS ml_priors (
    profile TEXT NOT NULL,
    behavior TEXT NOT NULL,
    state BLOB,
    built_ms INTEGER NOT NULL,
    PRIMARY KEY (profile, behavior)
);
-- dimensions (CreateDimension): named MQTT topic filters for behaviors' metricDimension
CREATE TABLE IF NOT EXISTS dimensions (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    string_values TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
-- metric history (ListMetricValues): one row per thing and datapoint time and source (a report,
-- or an evaluation of the broker's metrics), holding every retained metric's value:
-- {"aws:all-bytes-out": {"count": 3}, "aws:num-messages-sent|debug": {"count": 2}, ...}
-- (one row per report rather than per metric: a report costs one insert)
CREATE TABLE IF NOT EXISTS metric_values (
    thing TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (thing, time_ms, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_values_time ON metric_values(time_ms);
CREATE TABLE IF NOT EXISTS action_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    violation_id TEXT,
    thing TEXT NOT NULL,
    profile TEXT,
    behavior TEXT,
    action TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


class StoreError(ValueError):
    """A request the store refuses (too many profiles on a target, a bad target, ...)."""


class NotFound(StoreError):
    """The named thing, group, profile or violation does not exist."""


class StoreBusy(StoreError):
    """Another connection holds the write lock past the busy timeout: nothing was written; the
    same work can succeed later (`transient`)."""

    transient = True


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # json.dumps's work, built once
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _dumps(value: Any) -> Optional[str]:
    """A JSON column. orjson: the engine writes several per report (states, violation values,
    metric history), and the stdlib encoder was a tenth of the ingest CPU (docs/bench-engine.md)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # what orjson will not write (integers past 64 bits): the stdlib writes it
        return _ENCODER.encode(value)


def _loads(text: Optional[str]) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or Infinity, which older versions could write
        return json.loads(text)


def parse_target(target: str) -> Tuple[str, Optional[str]]:
    """ "all" | "group:NAME" | "thing:NAME" -> (kind, name)."""
    if target == "all":
        return "all", None
    kind, sep, name = target.partition(":")
    if not sep or kind not in ("group", "thing") or not name:
        raise StoreError(f"bad attachment target {target!r} (use all, group:NAME or thing:NAME)")
    return kind, name


# one statement each for a row and for a batch's rows (put_state / put_states, put_sample / put_samples)
_PUT_STATE = (
    "INSERT INTO eval_state (thing, profile, behavior, state, updated_ms) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(thing, profile, behavior) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms"
)
_PUT_SAMPLE = (
    "INSERT INTO fleet_samples (profile, behavior, thing, time_ms, value) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(profile, behavior, thing) DO UPDATE SET time_ms = excluded.time_ms, value = excluded.value"
)


class ThingRows(NamedTuple):
    """What reports read of their things, for many things at once (Store.read_things)."""

    last: Dict[str, Tuple[Optional[int], Optional[int]]]  # registered things: last_report()
    registered: Dict[str, int]  # registered things: first_seen()
    states: Dict[str, Dict[Tuple[str, str], Any]]  # every name: states_of_thing()
    open: Dict[str, Dict[Tuple[str, str], str]]  # every name: (profile, behavior) -> open violation id
    groups: Optional[Dict[str, List[str]]]  # every name: groups_of(), when asked for
    thresholds: Optional[Dict[Tuple[str, str], Dict[str, Any]]]  # thresholds(), when asked for


def is_postgres(db: Any) -> bool:
    """Whether `--db` names a PostgreSQL database (a postgresql:// URL) rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


class StoreRow(Protocol):
    """A result row, by position or by column name: sqlite3.Row, or PostgresStore's Row."""

    def __getitem__(self, key: Union[int, str], /) -> Any: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def keys(self) -> List[str]: ...


class Store:
    """The engine's SQLite state. Thread-safe; open one per process."""

    # a sqlite3.Connection here; PostgresStore keeps its psycopg connection under the same name
    _conn: Any
    busy_timeout_ms: Optional[int]  # PostgresStore: None waits as long as the server's lock_timeout

    def __new__(cls, path: Any = None, *args: Any, **kwargs: Any):
        if cls is Store and is_postgres(path):  # the same interface on PostgreSQL
            from garrison.detect.state.postgres import PostgresStore

            return super().__new__(PostgresStore)
        return super().__new__(cls)

    def __init__(self, path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        """busy_timeout_ms: how long a statement waits for another process's write lock (the
        engine's threads share one connection, so while one waits, all do)."""
        self.path = str(path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._settled_ddl: Set[str] = set()  # create_tables DDL known to exist for good
        self._depth = 0
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a committed transaction survives a process kill; only a power
            # loss can roll back the last few commits, never corrupt the file.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._create_schema()
        except (sqlite3.Error, StoreError) as exc:
            self._conn.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open database {self.path}: {exc}") from None

    def _create_schema(self) -> None:
        with self._lock:
            try:
                self._conn.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path} is not a Garrison database: {exc}") from None
            self._migrate()

    def create_tables(self, ddl: str) -> bool:
        """Run a module's own CREATE ... IF NOT EXISTS statements (`;`-separated, SQLite types; the
        PostgreSQL backend translates them), joining the caller's transaction if there is one.
        True when the tables now exist for good (created outside a transaction): the same DDL is
        then a no-op on this store, so modules call this before each use (a report's hook
        included) at the cost of a set lookup. Inside a transaction that may still roll back it
        is checked again next time."""
        if ddl in self._settled_ddl:
            return True
        if self._create_tables(ddl):
            self._settled_ddl.add(ddl)
            return True
        return False

    def _create_tables(self, ddl: str) -> bool:
        with self._lock:
            try:  # statement by statement: executescript would commit the caller's transaction
                for statement in filter(str.strip, ddl.split(";")):
                    self._conn.execute(statement)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot create tables in {self.path}: {exc}") from None
            return not self._conn.in_transaction

    def _script(self, sql: str) -> None:
        """Run several statements (the backend's DDL dialect)."""
        self._conn.executescript(sql)

    def _migrate(self) -> None:
        """Record the schema version of a new database; bring an older one up to SCHEMA_VERSION,
        one migration per transaction; refuse a newer one."""
        row = self._one("SELECT value FROM meta WHERE key='schema_version'")
        if row is None:
            self._exec("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),))
            return
        if int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer Garrison (schema {row[0]})")
        for version in range(int(row[0]) + 1, SCHEMA_VERSION + 1):
            self._script(
                f"BEGIN; {MIGRATIONS[version]}; "
                f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'; COMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def wal_autocheckpoint(self, pages: int) -> None:
        """After how many pages of write-ahead log a commit on this connection copies the log back
        itself (SQLite: 1,000). `serve` raises it and checkpoints on a thread (state.checkpoint)."""
        with self._lock:
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")

    @contextmanager
    def transaction(self, busy_timeout_ms: Optional[int] = None) -> Iterator["Store"]:
        """One atomic unit of work; nested calls join the outer transaction.

        busy_timeout_ms: how long to wait for another connection's write lock, for this
        transaction only (ingest waits briefly and retries later rather than stall); a lock held
        longer raises StoreBusy with nothing written.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            own_timeout = False
            if busy_timeout_ms is not None and busy_timeout_ms != self.busy_timeout_ms:
                own_timeout = True
                self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreBusy(f"database {self.path} is busy: {exc}") from None
            finally:
                if own_timeout:
                    self._conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            self._depth = 1
            try:
                yield self
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # the work, or the COMMIT itself (disk full), failed
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    @contextmanager
    def savepoint(self) -> Iterator["Store"]:
        """Inside a transaction: undo this block's writes alone if it raises."""
        with self._lock:
            self._conn.execute("SAVEPOINT unit")
            try:
                yield self
            except BaseException:
                self._conn.execute("ROLLBACK TO unit")
                raise
            finally:
                self._conn.execute("RELEASE unit")

    def change_marker(self) -> object:
        """Changes to the file by other connections (PRAGMA data_version) and rows changed through
        this one (total_changes): equal markers mean nobody wrote in between, so what the engine
        cached from the file is still true."""
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0], self._conn.total_changes

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, tuple(params))

    def _many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """One statement for many parameter rows (group commit)."""
        with self._lock:
            self._conn.executemany(sql, [tuple(r) for r in rows])

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> List[StoreRow]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Optional[StoreRow]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchone()

    def _rows_together(self, queries: Sequence[Tuple[str, Sequence[Any]]]) -> List[List[Any]]:
        """The rows of several reads (PostgreSQL pipelines them: one round trip for all)."""
        return [self._rows(sql, params) for sql, params in queries]

    def _in(self, column: str, values: Sequence[Any]) -> Tuple[str, List[Any]]:
        """The condition `column` is one of `values`, and its parameters."""
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def get_meta(self, key: str) -> Optional[str]:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else row[0]

    def put_meta(self, key: str, value: Optional[str]) -> None:
        """Set (or, with None, remove) a value in the meta table."""
        if value is None:
            self._exec("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._exec(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ---- things -------------------------------------------------------------------------------

    def register_thing(self, name: str, now_ms: int, pre_registered: bool = False) -> bool:
        """Register `name` (no-op if known); True if it is new."""
        cur = self._exec(
            "INSERT INTO things (name, registered_ms, pre_registered) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (name, now_ms, int(pre_registered)),
        )
        return cur.rowcount == 1

    def list_things(self) -> List[Dict[str, Any]]:
        return [self._thing(row) for row in self._rows("SELECT * FROM things ORDER BY name")]

    def delete_thing(self, name: str) -> bool:
        with self.transaction():
            self._exec("DELETE FROM group_members WHERE thing = ?", (name,))
            self._exec("DELETE FROM eval_state WHERE thing = ?", (name,))
            self._exec("DELETE FROM fleet_samples WHERE thing = ?", (name,))
            self._exec("DELETE FROM ml_models WHERE thing = ?", (name,))
            self._exec("DELETE FROM metric_values WHERE thing = ?", (name,))
            self._exec("DELETE FROM attachments WHERE target = ?", (f"thing:{name}",))
            return self._exec("DELETE FROM things WHERE name = ?", (name,)).rowcount == 1

    def _thing(self, row: StoreRow) -> Dict[str, Any]:
        """A thing's record (times in epoch seconds, like the violation records)."""
        last = row["last_received_ms"]
        return {
            "thingName": row["name"],
            "registeredTime": row["registered_ms"] / 1000.0,
            "preRegistered": bool(row["pre_registered"]),
            "lastReportId": row["last_report_id"],
            "lastReportTime": None if last is None else last / 1000.0,
            "reports": row["reports"],
            "groups": self.groups_of(row["name"]),
        }

    def last_report(self, name: str) -> Optional[Tuple[Optional[int], Optional[int]]]:
        """(last report id, last received ms) of a registered thing (both None before its first
        report), or None if the thing is unknown."""
        row = self._one("SELECT last_report_id, last_received_ms FROM things WHERE name = ?", (name,))
        return None if row is None else (row[0], row[1])

    def read_things(self, names: Iterable[str], groups: bool = False, thresholds: bool = False) -> ThingRows:
        """last_report, first_seen, states_of_thing, the open violations, with `groups` groups_of,
        for many things in a few queries (a batch's things: Engine.prefetch); with `thresholds`,
        the fleet thresholds too (PostgreSQL: all in one round trip)."""
        names = list(dict.fromkeys(names))
        out = ThingRows(
            {},
            {},
            {n: {} for n in names},
            {n: {} for n in names},
            {n: [] for n in names} if groups else None,
            {} if thresholds else None,
        )
        for first in range(0, len(names), 500):  # SQLite allows so many parameters per statement
            chunk = names[first : first + 500]
            by_name, by_thing = self._in("name", chunk), self._in("thing", chunk)
            queries: List[Tuple[str, Sequence[Any]]] = [
                (
                    "SELECT name, last_report_id, last_received_ms, registered_ms FROM things WHERE " + by_name[0],
                    by_name[1],
                ),
                ("SELECT thing, profile, behavior, state FROM eval_state WHERE " + by_thing[0], by_thing[1]),
                (
                    "SELECT thing, profile, behavior_name, violation_id FROM violations WHERE end_ms IS NULL AND "
                    + by_thing[0],
                    by_thing[1],
                ),
            ]
            if groups:
                queries.append(
                    (
                        "SELECT thing, group_name FROM group_members WHERE " + by_thing[0] + " ORDER BY group_name",
                        by_thing[1],
                    )
                )
            if thresholds and not first:
                queries.append(("SELECT * FROM fleet_thresholds", ()))
            found = self._rows_together(queries)
            for name, report_id, received_ms, registered_ms in found[0]:
                out.last[name] = (report_id, received_ms)
                out.registered[name] = registered_ms
            for thing, profile, behavior, state in found[1]:
                out.states[thing][(profile, behavior)] = _loads(state)
            for thing, profile, behavior, violation_id in found[2]:
                out.open[thing][(profile, behavior)] = violation_id
            if out.groups is not None:
                for thing, group in found[3]:
                    out.groups[thing].append(group)
            if out.thresholds is not None and not first:
                out.thresholds.update(self._thresholds(found[-1]))
        return out

    def first_seen(self, name: str) -> Optional[int]:
        """When the thing was registered (its first report, or `things add`), epoch ms; None if unknown."""
        row = self._one("SELECT registered_ms FROM things WHERE name = ?", (name,))
        return None if row is None else row[0]

    def last_received_times(self) -> Dict[str, int]:
        """Every thing that has reported -> when its last accepted report was dated (ms)."""
        return {
            r[0]: r[1]
            for r in self._rows("SELECT name, last_received_ms FROM things WHERE last_received_ms IS NOT NULL")
        }

    def record_reports(self, rows: Iterable[Tuple[int, int, int, str]]) -> None:
        """record_report for many (report id, received ms, how many reports, thing) at once."""
        self._many(
            "UPDATE things SET last_report_id = ?, last_received_ms = ?, reports = reports + ? WHERE name = ?", rows
        )

    def record_report(self, name: str, report_id: int, received_ms: int) -> None:
        self._exec(
            "UPDATE things SET last_report_id = ?, last_received_ms = ?, reports = reports + 1 WHERE name = ?",
            (report_id, received_ms, name),
        )

    # ---- groups -------------------------------------------------------------------------------

    def create_group(self, name: str, now_ms: int, description: str = "") -> bool:
        cur = self._exec(
            "INSERT INTO thing_groups (name, created_ms, description) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (name, now_ms, description),
        )
        return cur.rowcount == 1

    def delete_group(self, name: str) -> bool:
        with self.transaction():
            self._exec("DELETE FROM attachments WHERE target = ?", (f"group:{name}",))
            return self._exec("DELETE FROM thing_groups WHERE name = ?", (name,)).rowcount == 1

    def group_exists(self, name: str) -> bool:
        return self._one("SELECT 1 FROM thing_groups WHERE name = ?", (name,)) is not None

    def add_to_group(self, group: str, thing: str, now_ms: int) -> bool:
        """Add `thing` to `group` (the thing need not have reported yet); True if it was not in it."""
        with self.transaction():
            if not self.group_exists(group):
                raise NotFound(f"no thing group named {group!r}")
            cur = self._exec(
                "INSERT INTO group_members (group_name, thing, added_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (group, thing, now_ms),
            )
            return cur.rowcount == 1

    def remove_from_group(self, group: str, thing: str) -> bool:
        with self.transaction():
            if not self.group_exists(group):
                raise NotFound(f"no thing group named {group!r}")
            return (
                self._exec("DELETE FROM group_members WHERE group_name = ? AND thing = ?", (group, thing)).rowcount == 1
            )

    def list_groups(self) -> List[Dict[str, Any]]:
        groups = []
        for row in self._rows("SELECT * FROM thing_groups ORDER BY name"):
            members = [
                r[0]
                for r in self._rows(
                    "SELECT thing FROM group_members WHERE group_name = ? ORDER BY thing", (row["name"],)
                )
            ]
            groups.append(
                {
                    "groupName": row["name"],
                    "description": row["description"],
                    "creationTime": row["created_ms"] / 1000.0,
                    "things": members,
                }
            )
        return groups

    def groups_of(self, thing: str) -> List[str]:
        return [
            r[0]
            for r in self._rows("SELECT group_name FROM group_members WHERE thing = ? ORDER BY group_name", (thing,))
        ]

    # ---- profiles and attachments -------------------------------------------------------------

    def put_profile(self, name: str, doc: Dict[str, Any], now_ms: int) -> bool:
        """Create or replace a profile; True if it is new."""
        with self.transaction():
            existed = self.get_profile(name) is not None
            self._exec(
                "INSERT INTO profiles (name, doc, created_ms, updated_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET doc = excluded.doc, updated_ms = excluded.updated_ms",
                (name, _dumps(doc), now_ms, now_ms),
            )
            return not existed

    def get_profile(self, name: str) -> Optional[Dict[str, Any]]:
        return _loads(self.get_profile_text(name))

    def get_profile_text(self, name: str) -> Optional[str]:
        """The stored JSON text (the engine's cache key: it changes whenever the profile does)."""
        row = self._one("SELECT doc FROM profiles WHERE name = ?", (name,))
        return None if row is None else row[0]

    def list_profiles(self) -> List[Dict[str, Any]]:
        out = []
        for row in self._rows("SELECT name, doc, created_ms, updated_ms FROM profiles ORDER BY name"):
            out.append(
                {
                    "securityProfileName": row["name"],
                    "doc": _loads(row["doc"]),
                    "created_ms": row["created_ms"],
                    "updated_ms": row["updated_ms"],
                    "targets": self.attachments_of(row["name"]),
                }
            )
        return out

    def delete_profile(self, name: str) -> bool:
        with self.transaction():
            self._exec("DELETE FROM eval_state WHERE profile = ?", (name,))
            self._exec("DELETE FROM fleet_samples WHERE profile = ?", (name,))
            self._exec("DELETE FROM fleet_thresholds WHERE profile = ?", (name,))
            self._exec("DELETE FROM ml_models WHERE profile = ?", (name,))
            self._exec("DELETE FROM ml_priors WHERE profile = ?", (name,))
            return self._exec("DELETE FROM profiles WHERE name = ?", (name,)).rowcount == 1

    def attach(self, profile: str, target: str) -> bool:
        """Attach a profile to "all", "group:NAME" or "thing:NAME" (at most 5 profiles per target)."""
        kind, name = parse_target(target)
        with self.transaction():
            if self.get_profile(profile) is None:
                raise NotFound(f"no security profile named {profile!r}")
            if kind == "group" and name is not None and not self.group_exists(name):  # a group always has one
                raise NotFound(f"no thing group named {name!r}")
            attached = [r[0] for r in self._rows("SELECT profile FROM attachments WHERE target = ?", (target,))]
            if profile in attached:
                return False
            if len(attached) >= MAX_PROFILES_PER_TARGET:
                raise StoreError(
                    f"target {target} already has {MAX_PROFILES_PER_TARGET} security profiles "
                    f"({', '.join(sorted(attached))})"
                )
            self._exec("INSERT INTO attachments (profile, target) VALUES (?, ?)", (profile, target))
            return True

    def detach(self, profile: str, target: str) -> bool:
        parse_target(target)
        return self._exec("DELETE FROM attachments WHERE profile = ? AND target = ?", (profile, target)).rowcount == 1

    def attachments_of(self, profile: str) -> List[str]:
        return [
            r[0] for r in self._rows("SELECT target FROM attachments WHERE profile = ? ORDER BY target", (profile,))
        ]

    def profiles_for_thing(self, thing: str) -> List[str]:
        """Profiles that apply to `thing`: attached to all things, one of its groups, or itself."""
        targets = ["all", f"thing:{thing}"] + [f"group:{g}" for g in self.groups_of(thing)]
        marks = ",".join("?" * len(targets))
        return [
            r[0]
            for r in self._rows(
                f"SELECT DISTINCT profile FROM attachments WHERE target IN ({marks}) ORDER BY profile", targets
            )
        ]

    def attachments_by_target(self) -> Dict[str, List[str]]:
        """Every attachment: target -> its profiles (sorted)."""
        out: Dict[str, List[str]] = {}
        for target, profile in self._rows("SELECT target, profile FROM attachments ORDER BY profile"):
            out.setdefault(target, []).append(profile)
        return out

    def things_under_profile(self, profile: str) -> List[str]:
        """Things the profile applies to now: registered things if it is attached to all, named
        things, and members of attached groups."""
        rows = self._rows(
            "SELECT name FROM things WHERE EXISTS (SELECT 1 FROM attachments WHERE profile = ? AND target = 'all') "
            "UNION SELECT substr(target, 7) FROM attachments WHERE profile = ? AND target LIKE 'thing:%' "
            "UNION SELECT m.thing FROM group_members m JOIN attachments a ON a.target = 'group:' || m.group_name "
            "WHERE a.profile = ? ORDER BY 1",
            (profile,) * 3,
        )
        return [r[0] for r in rows]

    # ---- evaluation state ---------------------------------------------------------------------

    def get_state(self, thing: str, profile: str, behavior: str) -> Any:
        row = self._one(
            "SELECT state FROM eval_state WHERE thing = ? AND profile = ? AND behavior = ?", (thing, profile, behavior)
        )
        return None if row is None else _loads(row[0])

    def states_of_thing(self, thing: str) -> Dict[Tuple[str, str], Any]:
        """Every evaluation state of `thing`, keyed (profile, behavior): one query per report."""
        return {
            (r[0], r[1]): _loads(r[2])
            for r in self._rows("SELECT profile, behavior, state FROM eval_state WHERE thing = ?", (thing,))
        }

    def states_of_behavior(self, profile: str, behavior: str) -> Dict[str, Any]:
        """Every thing's evaluation state of one behavior, keyed by thing: one query per sweep."""
        return {
            r[0]: _loads(r[1])
            for r in self._rows(
                "SELECT thing, state FROM eval_state WHERE profile = ? AND behavior = ?", (profile, behavior)
            )
        }

    def put_state(self, thing: str, profile: str, behavior: str, state: Any, now_ms: int) -> None:
        self._exec(_PUT_STATE, (thing, profile, behavior, _dumps(state), now_ms))

    def put_states(self, rows: Iterable[Tuple[str, str, str, Any, int]]) -> None:
        """put_state for many (thing, profile, behavior, state, now_ms) at once (group commit)."""
        self._many(_PUT_STATE, [(t, p, b, _dumps(st), ms) for t, p, b, st, ms in rows])

    def delete_state(self, thing: str, profile: str, behavior: str) -> None:
        self._exec(
            "DELETE FROM eval_state WHERE thing = ? AND profile = ? AND behavior = ?", (thing, profile, behavior)
        )

    # ---- violations ---------------------------------------------------------------------------

    def open_violation(self, thing: str, profile: str, behavior_name: str) -> Optional[StoreRow]:
        return self._one(
            "SELECT * FROM violations WHERE thing = ? AND profile = ? AND behavior_name = ? AND end_ms IS NULL",
            (thing, profile, behavior_name),
        )

    def insert_violation(
        self,
        violation_id: str,
        thing: str,
        profile: str,
        behavior: Dict[str, Any],
        value: Any,
        time_ms: int,
        additional_info: Any,
    ) -> None:
        self._exec(
            "INSERT INTO violations (violation_id, thing, profile, behavior_name, behavior, start_ms, "
            "last_value, last_ms, additional_info) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                violation_id,
                thing,
                profile,
                behavior["name"],
                _dumps(behavior),
                time_ms,
                _dumps(value),
                time_ms,
                _dumps(additional_info),
            ),
        )

    def update_violation_value(self, violation_id: str, value: Any, time_ms: int, additional_info: Any) -> None:
        self._exec(
            "UPDATE violations SET last_value = ?, last_ms = ?, additional_info = ? WHERE violation_id = ?",
            (_dumps(value), time_ms, _dumps(additional_info), violation_id),
        )

    def update_violation_values(self, rows: Iterable[Tuple[str, Any, int, Any]]) -> None:
        """update_violation_value for many (violation id, value, time ms, additional info)."""
        self._many(
            "UPDATE violations SET last_value = ?, last_ms = ?, additional_info = ? WHERE violation_id = ?",
            [(_dumps(v), ms, _dumps(info), vid) for vid, v, ms, info in rows],
        )

    def close_violation(self, violation_id: str, end_type: str, time_ms: int) -> None:
        self._exec(
            "UPDATE violations SET end_ms = ?, end_type = ? WHERE violation_id = ? AND end_ms IS NULL",
            (time_ms, end_type, violation_id),
        )

    def get_violation(self, violation_id: str) -> Optional[StoreRow]:
        return self._one("SELECT * FROM violations WHERE violation_id = ?", (violation_id,))

    def set_verification(self, violation_id: str, state: str, description: Optional[str]) -> bool:
        return (
            self._exec(
                "UPDATE violations SET verification_state = ?, verification_description = ? WHERE violation_id = ?",
                (state, description, violation_id),
            ).rowcount
            == 1
        )

    def list_violations(
        self, active_only: bool = False, thing: Optional[str] = None, profile: Optional[str] = None
    ) -> List[StoreRow]:
        where, params = self._filters(thing=thing, profile=profile)
        if active_only:
            where.append("end_ms IS NULL")
        sql = "SELECT * FROM violations" + (" WHERE " + " AND ".join(where) if where else "")
        return self._rows(sql + " ORDER BY start_ms, violation_id", params)

    @staticmethod
    def _filters(prefix: str = "", **values: Any) -> Tuple[List[str], List[Any]]:
        where, params = [], []
        for column, value in values.items():
            if value is not None:
                where.append(f"{prefix}{column} = ?")
                params.append(value)
        return where, params

    # ---- events and the alert outbox ----------------------------------------------------------

    def insert_event(
        self,
        violation_id: str,
        event_type: str,
        time_ms: int,
        thing: str,
        profile: str,
        behavior: Dict[str, Any],
        metric_value: Any,
        additional_info: Any,
        suppress_alerts: bool,
    ) -> Optional[int]:
        """Record an event; None if this episode already has an event of this type."""
        rows = self._rows(
            "INSERT INTO violation_events (violation_id, event_type, time_ms, thing, "
            "profile, behavior, metric_value, additional_info, suppress_alerts, alerted_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING seq",
            (
                violation_id,
                event_type,
                time_ms,
                thing,
                profile,
                _dumps(behavior),
                _dumps(metric_value),
                _dumps(additional_info),
                int(suppress_alerts),
                time_ms if suppress_alerts else None,
            ),
        )
        return rows[0][0] if rows else None

    def list_events(
        self,
        thing: Optional[str] = None,
        profile: Optional[str] = None,
        start_ms: Optional[int] = None,
        end_ms: Optional[int] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> List[StoreRow]:
        where, params = self._filters(prefix="e.", thing=thing, profile=profile)
        for clause, value in (("e.time_ms >= ?", start_ms), ("e.time_ms <= ?", end_ms), ("e.seq > ?", after_seq)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = (
            "SELECT e.*, v.verification_state, v.verification_description FROM violation_events e "
            "JOIN violations v ON v.violation_id = e.violation_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY e.seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._rows(sql, params)

    def pending_alerts(self, limit: int = 500) -> List[StoreRow]:
        """Events whose alert has not been handed to the alert targets yet (oldest first)."""
        return self._rows(
            "SELECT e.*, v.verification_state, v.verification_description FROM violation_events e "
            "JOIN violations v ON v.violation_id = e.violation_id "
            "WHERE e.alerted_ms IS NULL ORDER BY e.seq LIMIT ?",
            (limit,),
        )

    def mark_alerted(self, seq: int, now_ms: int, failure: Optional[str] = None) -> None:
        """The alert of event `seq` was delivered, or (with `failure`) given up after its last
        attempt: either way it leaves the outbox; a failure is kept in alert_failures."""
        with self.transaction():
            self._exec("UPDATE violation_events SET alerted_ms = ? WHERE seq = ?", (now_ms, seq))
            if failure is not None:
                self._exec(
                    "INSERT INTO alert_failures (seq, failed_ms, detail) VALUES (?, ?, ?) ON CONFLICT(seq) "
                    "DO UPDATE SET failed_ms = excluded.failed_ms, detail = excluded.detail",
                    (seq, now_ms, failure[:2000]),
                )

    def alert_failures(self) -> List[StoreRow]:
        """Alerts given up after their last attempt: seq, failed_ms, detail (oldest first)."""
        return self._rows("SELECT seq, failed_ms, detail FROM alert_failures ORDER BY seq")

    # ---- fleet statistics ---------------------------------------------------------------------

    def put_sample(self, profile: str, behavior: str, thing: str, time_ms: int, value: float) -> None:
        """Keep `thing`'s latest judged value for a statistical behavior."""
        self._exec(_PUT_SAMPLE, (profile, behavior, thing, time_ms, float(value)))

    def put_samples(self, rows: Iterable[Tuple[str, str, str, int, float]]) -> None:
        """put_sample for many (profile, behavior, thing, time_ms, value) at once (group commit)."""
        self._many(_PUT_SAMPLE, [(p, b, t, ms, float(v)) for p, b, t, ms, v in rows])

    def samples(self, profile: str, behavior: str, since_ms: int) -> List[Tuple[str, int, float]]:
        """(thing, time_ms, value) of the devices whose latest value is newer than `since_ms`."""
        return [
            (r[0], r[1], r[2])
            for r in self._rows(
                "SELECT thing, time_ms, value FROM fleet_samples WHERE profile = ? AND behavior = ? AND time_ms > ? "
                "ORDER BY thing",
                (profile, behavior, since_ms),
            )
        ]

    def forget_behavior(self, profile: str, behavior: str) -> None:
        """Drop evaluation state, fleet statistics and models of one behavior (it changed or went away)."""
        self._exec("DELETE FROM eval_state WHERE profile = ? AND behavior = ?", (profile, behavior))
        self._exec("DELETE FROM ml_models WHERE profile = ? AND behavior = ?", (profile, behavior))
        self._exec("DELETE FROM ml_priors WHERE profile = ? AND behavior = ?", (profile, behavior))
        self._exec("DELETE FROM fleet_samples WHERE profile = ? AND behavior = ?", (profile, behavior))
        self._exec("DELETE FROM fleet_thresholds WHERE profile = ? AND behavior = ?", (profile, behavior))

    def put_threshold(self, profile: str, behavior: str, value: Optional[float], devices: int, now_ms: int) -> None:
        self._exec(
            "INSERT INTO fleet_thresholds (profile, behavior, value, devices, computed_ms) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(profile, behavior) DO UPDATE SET value = excluded.value, devices = excluded.devices, "
            "computed_ms = excluded.computed_ms",
            (profile, behavior, value, devices, now_ms),
        )

    def thresholds(self) -> Dict[Tuple[str, str], Dict[str, Any]]:
        """get_threshold of every (profile, behavior) that has one."""
        return self._thresholds(self._rows("SELECT * FROM fleet_thresholds"))

    @staticmethod
    def _thresholds(rows) -> Dict[Tuple[str, str], Dict[str, Any]]:
        return {
            (r["profile"], r["behavior"]): {
                "value": r["value"],
                "devices": r["devices"],
                "computed_ms": r["computed_ms"],
            }
            for r in rows
        }

    def get_threshold(self, profile: str, behavior: str) -> Optional[Dict[str, Any]]:
        rows = self._rows("SELECT * FROM fleet_thresholds WHERE profile = ? AND behavior = ?", (profile, behavior))
        return self._thresholds(rows).get((profile, behavior))

    # ---- ML Detect model states ---------------------------------------------------------------

    def get_model(self, profile: str, behavior: str, thing: str) -> Optional[bytes]:
        row = self._one(
            "SELECT state FROM ml_models WHERE profile = ? AND behavior = ? AND thing = ?", (profile, behavior, thing)
        )
        return None if row is None else bytes(row[0])

    def put_model(self, profile: str, behavior: str, thing: str, state: bytes) -> None:
        self._exec(
            "INSERT INTO ml_models (profile, behavior, thing, state) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(profile, behavior, thing) DO UPDATE SET state = excluded.state",
            (profile, behavior, thing, bytes(state)),
        )

    def delete_model(self, profile: str, behavior: str, thing: str) -> bool:
        return (
            self._exec(
                "DELETE FROM ml_models WHERE profile = ? AND behavior = ? AND thing = ?", (profile, behavior, thing)
            ).rowcount
            == 1
        )

    def model_things(self, profile: str, behavior: str) -> List[str]:
        return [
            r[0]
            for r in self._rows(
                "SELECT thing FROM ml_models WHERE profile = ? AND behavior = ? ORDER BY thing", (profile, behavior)
            )
        ]

    def get_prior(self, profile: str, behavior: str) -> Optional[Tuple[Optional[bytes], int]]:
        row = self._one("SELECT state, built_ms FROM ml_priors WHERE profile = ? AND behavior = ?", (profile, behavior))
        return None if row is None else (None if row[0] is None else bytes(row[0]), row[1])

    def put_prior(self, profile: str, behavior: str, state: Optional[bytes], built_ms: int) -> None:
        self._exec(
            "INSERT INTO ml_priors (profile, behavior, state, built_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(profile, behavior) DO UPDATE SET state = excluded.state, built_ms = excluded.built_ms",
            (profile, behavior, None if state is None else bytes(state), built_ms),
        )

    # ---- dimensions ---------------------------------------------------------------------------

    def put_dimension(
        self, name: str, dimension_type: str, values: List[str], now_ms: int, create: bool = True
    ) -> bool:
        """Create (create=True; False if it exists) or update (False if it does not) a dimension."""
        if create:
            return (
                self._exec(
                    "INSERT INTO dimensions (name, type, string_values, created_ms, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (name, dimension_type, _dumps(values), now_ms, now_ms),
                ).rowcount
                == 1
            )
        return (
            self._exec(
                "UPDATE dimensions SET string_values = ?, updated_ms = ? WHERE name = ?", (_dumps(values), now_ms, name)
            ).rowcount
            == 1
        )

    def get_dimension(self, name: str) -> Optional[Dict[str, Any]]:
        row = self._one("SELECT * FROM dimensions WHERE name = ?", (name,))
        return (
            None
            if row is None
            else {
                "name": row["name"],
                "type": row["type"],
                "values": _loads(row["string_values"]),
                "created_ms": row["created_ms"],
                "updated_ms": row["updated_ms"],
            }
        )

    def list_dimensions(self) -> List[str]:
        return [r[0] for r in self._rows("SELECT name FROM dimensions ORDER BY name")]

    def delete_dimension(self, name: str) -> bool:
        return self._exec("DELETE FROM dimensions WHERE name = ?", (name,)).rowcount == 1

    # ---- metric history -----------------------------------------------------------------------

    def put_metric_values(self, thing: str, time_ms: int, source: str, values: Dict[str, Any]) -> None:
        """Keep the datapoints of one report (source "report") or evaluation ("broker"):
        {metric key: MetricValue}; the same thing, time and source again replaces them."""
        self.put_metric_values_many([(thing, time_ms, source, values)])

    def put_metric_values_many(self, rows: Iterable[Tuple[str, int, str, Dict[str, Any]]]) -> None:
        """put_metric_values for (thing, time_ms, source, values) rows in one statement (a batch's)."""
        self._many(
            "INSERT INTO metric_values (thing, time_ms, source, doc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (thing, time_ms, source) DO UPDATE SET doc = excluded.doc",
            [(thing, time_ms, source, _dumps(values)) for thing, time_ms, source, values in rows],
        )

    def metric_values(
        self, thing: str, key: str, start_ms: int, end_ms: int, after_ms: Optional[int] = None, limit: int = 250
    ) -> List[Tuple[int, Any]]:
        """(time_ms, value) of one metric key in [start_ms, end_ms], oldest first, after `after_ms`."""
        low = start_ms if after_ms is None else max(start_ms, after_ms + 1)
        # the key is picked out here, not with SQLite's json_extract: the same query on PostgreSQL;
        # rows without the key are skipped, a chunk at a time
        found: List[Tuple[int, Any]] = []
        while len(found) < limit:
            rows = self._rows(
                "SELECT time_ms, doc FROM metric_values WHERE thing = ? AND time_ms BETWEEN ? AND ? "
                "ORDER BY time_ms LIMIT ?",
                (thing, low, end_ms, 4 * limit),
            )
            for time_ms, doc in rows:
                value = json.loads(doc).get(key)
                if value is not None:
                    found.append((time_ms, value))
                    if len(found) == limit:
                        break
            if len(rows) < 4 * limit:
                break
            low = rows[-1][0] + 1
        return found

    def prune_metric_values(self, before_ms: int) -> int:
        """Drop datapoints older than `before_ms` (retention); returns how many."""
        return self._exec("DELETE FROM metric_values WHERE time_ms < ?", (before_ms,)).rowcount

    # ---- mitigation audit log -----------------------------------------------------------------

    def log_action(
        self,
        time_ms: int,
        thing: str,
        action: Dict[str, Any],
        dry_run: bool,
        outcome: str,
        detail: str = "",
        violation_id: Optional[str] = None,
        profile: Optional[str] = None,
        behavior: Optional[str] = None,
    ) -> int:
        return self._rows(
            "INSERT INTO action_log (time_ms, violation_id, thing, profile, behavior, action, "
            "dry_run, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (time_ms, violation_id, thing, profile, behavior, _dumps(action), int(dry_run), outcome, detail),
        )[0][0]

    def list_actions(self, thing: Optional[str] = None) -> List[Dict[str, Any]]:
        where, params = self._filters(thing=thing)
        sql = "SELECT * FROM action_log" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        return [
            {
                "seq": r["seq"],
                "time": r["time_ms"] / 1000.0,
                "violationId": r["violation_id"],
                "thingName": r["thing"],
                "securityProfileName": r["profile"],
                "behaviorName": r["behavior"],
                "action": _loads(r["action"]),
                "dryRun": bool(r["dry_run"]),
                "outcome": r["outcome"],
                "detail": r["detail"],
            }
            for r in self._rows(sql, params)
        ]

    def pending_actions(self, limit: int = 100) -> List[Dict[str, Any]]:
        """Logged actions still to be carried out (garrison.detect.respond.runner), oldest first."""
        rows = self._rows("SELECT * FROM action_log WHERE outcome = 'pending' ORDER BY seq LIMIT ?", (limit,))
        return [
            {
                "seq": r["seq"],
                "thingName": r["thing"],
                "action": _loads(r["action"]),
                "violationId": r["violation_id"],
                "securityProfileName": r["profile"],
                "behaviorName": r["behavior"],
            }
            for r in rows
        ]

    def claim_action(self, seq: int) -> bool:
        """Mark a pending action as running; False if another process took it first."""
        with self.transaction():
            return (
                self._exec(
                    "UPDATE action_log SET outcome = 'running' WHERE seq = ? AND outcome = 'pending'", (seq,)
                ).rowcount
                == 1
            )

    def finish_action(self, seq: int, outcome: str, detail: str) -> None:
        with self.transaction():
            self._exec("UPDATE action_log SET outcome = ?, detail = ? WHERE seq = ?", (outcome, detail, seq))

    def requeue_running_actions(self) -> int:
        """After a crash: actions that were running when the process died run again."""
        with self.transaction():
            return self._exec("UPDATE action_log SET outcome = 'pending' WHERE outcome = 'running'").rowcount

    def action_outcome(self, seq: int) -> Optional[str]:
        row = self._one("SELECT outcome FROM action_log WHERE seq = ?", (seq,))
        return None if row is None else row["outcome"]


def loads(text: Optional[str]) -> Any:
    """Decode a JSON column (for garrison.detect.respond.violations)."""
    return _loads(text)
