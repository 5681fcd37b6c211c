"""The engine's state on PostgreSQL: the same interface, schema and migrations as the SQLite store.

`Store("postgresql://...")` returns a `PostgresStore` (the scale-out deployment, docs/scale-out.md):
workers on several machines, the CLI and the HTTP API share one database. The SQL is the
SQLite store's own (garrison.detect.state.store), written in the dialect both agree on; this
module only translates what differs:
  - placeholders: `?` -> `%s` (and a literal `%` -> `%%`) for psycopg;
  - DDL types: INTEGER -> BIGINT (epoch ms overflow int4), REAL -> DOUBLE PRECISION (REAL is
    float4 in PostgreSQL), BLOB -> BYTEA, INTEGER PRIMARY KEY AUTOINCREMENT -> BIGSERIAL, and TEXT
    -> TEXT COLLATE "C" so ORDER BY sorts names bytewise, as SQLite does, whatever the server's locale.
Rows answer `row[0]` and `row["name"]` like sqlite3.Row.

Inside a transaction, statements are pipelined (psycopg's pipeline mode): writes whose results
nobody reads (the engine's state updates) go out together instead of one round trip each; a
read, or a look at a write's rowcount, waits for what is in flight. BEGIN goes out with the
transaction's first read and COMMIT with its last writes, several reads can share one round trip
(`_rows_together`), and a savepoint is only sent when its block runs a statement: a batch of
reports costs the engine three round trips (docs/scale-out.md, "Round trips"). Transactions are REPEATABLE READ: the workers own disjoint things (partitions), but periodic
work and the CLI may touch a worker's rows; a concurrent update of the same row then fails
with a serialization error (StoreConflict, `transient`: nothing was written, the same work can
be done again) instead of one write silently overwriting the other. One connection per Store,
shared by the process's threads behind a lock, as with SQLite; it is re-opened when the server
dropped it (a restart, a failover).
"""

import re
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple

from garrison.detect.state.store import _SCHEMA, Store, StoreBusy, StoreError, StoreRow

try:
    import psycopg
    from psycopg import errors as pg_errors

    HAVE_PSYCOPG = True
except ImportError:  # pragma: no cover - the `scaleout` extra is not installed
    HAVE_PSYCOPG = False

CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK_KEY = 0x6761727269736F6E  # "garrison": serializes schema creation across workers
STATEMENT_TIMEOUT_MS = 30000


class StoreConflict(StoreBusy):
    """A concurrent transaction changed the same rows (or a lock wait timed out): nothing of this
    transaction was written; the same work can succeed when tried again."""

    transient = True


def redact_dsn(dsn: str) -> str:
    """The URL without its password (for logs and error messages)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", dsn)


def pg_ddl(sql: str) -> str:
    """The SQLite DDL in PostgreSQL's types (see the module docstring)."""
    sql = re.sub(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", "BIGSERIAL PRIMARY KEY", sql)
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    sql = re.sub(r"\)\s*WITHOUT ROWID", ")", sql)  # a SQLite storage hint
    return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)


# Store.change_marker on PostgreSQL: a digest of what Engine keeps from batch to batch (the
# profiles and their attachments), fixed-width pieces so no two contents read alike
CONFIG_DIGEST = (
    "SELECT md5(coalesce((SELECT string_agg(md5(name) || md5(doc), '' ORDER BY name) FROM profiles), '') "
    "|| '/' || coalesce((SELECT string_agg(md5(profile) || md5(target), '' ORDER BY profile, target) "
    "FROM attachments), ''))"
)
_CONFIG_WRITE = re.compile(r"^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(profiles|attachments)\b", re.IGNORECASE)
_writes_config: Dict[str, bool] = {}


def writes_config(sql: str) -> bool:
    """Whether a statement changes what CONFIG_DIGEST covers."""
    out = _writes_config.get(sql)
    if out is None:
        out = _writes_config[sql] = _CONFIG_WRITE.match(sql) is not None
    return out


_translated: Dict[str, str] = {}


def pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled). No `?` may appear in a string
    literal: the store's SQL has none."""
    out = _translated.get(sql)
    if out is None:
        out = _translated[sql] = sql.replace("%", "%%").replace("?", "%s")
    return out


class Row:
    """One result row: by position or by column name, like sqlite3.Row."""

    __slots__ = ("_values", "_index")

    def __init__(self, values, index: Dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key):
        return self._values[key] if isinstance(key, int) else self._values[self._index[key]]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self):
        return iter(self._values)

    def keys(self) -> List[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


class _Pipelined:
    """A cursor whose statement may still be in the pipeline: its rowcount waits for it."""

    __slots__ = ("_cursor", "_pipe", "_store")

    def __init__(self, cursor, pipe, store):
        self._cursor, self._pipe, self._store = cursor, pipe, store

    @property
    def rowcount(self) -> int:
        try:
            self._pipe.sync()
        except psycopg.Error as exc:  # the write itself failed: a conflict is transient
            self._store._raise(exc)
        return self._cursor.rowcount

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()


def _row_factory(cursor):
    index = {col.name: i for i, col in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


class PostgresStore(Store):
    """The engine's state in a PostgreSQL database (a `postgresql://` URL)."""

    def __init__(self, dsn: str, busy_timeout_ms: Optional[int] = None):
        """busy_timeout_ms: how long a transaction's statements wait for another's row locks by
        default (None: PostgreSQL's own lock_timeout)."""
        if not HAVE_PSYCOPG:
            raise StoreError("a postgresql:// database needs psycopg: pip install 'garrison[scaleout]'")
        self.dsn = dsn
        self.path = redact_dsn(dsn)
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.RLock()
        self._settled_ddl: Set[str] = set()
        self._depth = 0
        self._pipe = None  # the open pipeline, inside a transaction
        self._marker: Optional[str] = None  # change_marker's answer in the open transaction
        self._savepoints: List[bool] = []  # the open savepoint() blocks: whether their SAVEPOINT was sent
        self._unsynced = False  # statements sent whose outcome nobody waited for (writes)
        self._conn = self._connect()
        try:
            self._create_schema()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self):
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=True, row_factory=_row_factory, connect_timeout=CONNECT_TIMEOUT_S
            )
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")  # a stuck query is an error
        except psycopg.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {_first_line(exc)}") from None
        return conn

    def _create_schema(self) -> None:
        with self._lock:
            try:
                with self._conn.transaction():  # several workers may start at once
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                    self._conn.execute(pg_ddl(_SCHEMA))
            except psycopg.Error as exc:
                raise StoreError(f"cannot create the schema in {self.path}: {_first_line(exc)}") from None
            self._migrate()

    def _create_tables(self, ddl: str) -> bool:
        """The SQLite store's create_tables on PostgreSQL: tables that exist are not touched (no
        lock, so workers do not queue behind each other); missing ones are created under the
        schema lock, in the caller's transaction if there is one."""
        statements = [pg_ddl(st) for st in ddl.split(";") if st.strip()]
        tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", ddl)

        def exists(table: str) -> bool:
            row = self._one("SELECT to_regclass(?)", (table,))  # always one row: NULL when missing
            return row is not None and row[0] is not None

        with self._lock:
            try:
                if tables and all(exists(t) for t in tables):
                    return True
                with self.transaction():
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                    for statement in statements:
                        self._conn.execute(statement)
            except psycopg.Error as exc:
                raise StoreError(f"cannot create tables in {self.path}: {_first_line(exc)}") from None
            return self._depth == 0

    def _script(self, sql: str) -> None:
        self._conn.execute(pg_ddl(sql))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self, busy_timeout_ms: Optional[int] = None) -> Iterator["PostgresStore"]:
        """One atomic unit of work (REPEATABLE READ); nested calls join the outer transaction.
        busy_timeout_ms: how long a statement may wait for another transaction's row lock."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._reconnect_if_closed()
            busy_timeout_ms = self.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
            self._depth = 1
            self._marker = None
            self._savepoints = []
            self._unsynced = False
            try:
                with self._conn.pipeline() as pipe:
                    self._pipe = pipe
                    try:
                        # BEGIN goes out with the transaction's first read, COMMIT with the sync
                        # that waits for every write: a transaction costs no round trip of its own
                        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        if busy_timeout_ms is not None:
                            self._conn.execute(f"SET LOCAL lock_timeout = {int(busy_timeout_ms)}")
                        yield self
                        # after a failed statement the server skips the rest, COMMIT included, and
                        # the pipeline's closing sync raises its error
                        commit = self._conn.execute("COMMIT")
                    finally:
                        self._pipe = None
                if commit.statusmessage != "COMMIT":  # an error swallowed in the block: rolled back
                    raise StoreError(f"database {self.path}: the transaction was rolled back (a statement failed)")
            except BaseException as exc:
                if not self._conn.closed and self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    try:
                        self._conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                if isinstance(exc, psycopg.Error):
                    raise self._error(exc) from exc
                raise
            finally:
                self._depth = 0
                self._marker = None

    @contextmanager
    def savepoint(self) -> Iterator["PostgresStore"]:
        """Inside a transaction: undo this block's writes alone if it raises. The SAVEPOINT goes
        out with the block's first statement (a report whose writes are all held back to the
        batch's end, Engine.batch, costs none); a block that sent any waits for its statements
        before leaving, so that a failing one fails this block, not a later one or the batch
        (a failed statement stops the pipeline until it is synced)."""
        with self._lock:
            self._savepoints.append(False)
            try:
                yield self
                if self._savepoints[-1] and self._unsynced and self._pipe is not None:
                    self._unsynced = False
                    try:
                        self._pipe.sync()
                    except psycopg.Error as exc:
                        self._raise(exc)
            except BaseException:
                if self._savepoints[-1]:
                    if self._pipe is not None:
                        try:  # out of the aborted pipeline (its error is the one being raised)
                            self._pipe.sync()
                        except psycopg.Error:
                            pass
                    self._conn.execute("ROLLBACK TO SAVEPOINT unit")
                raise
            finally:
                if self._savepoints.pop():
                    self._conn.execute("RELEASE SAVEPOINT unit")

    def _open_savepoints(self) -> None:
        """Before a statement inside savepoint(): the SAVEPOINTs not sent yet (a failing statement,
        read or write, must find its block's savepoint there to roll back to)."""
        for i, sent in enumerate(self._savepoints):
            if not sent:
                self._conn.execute("SAVEPOINT unit")
                self._savepoints[i] = True

    def change_marker(self) -> object:
        """What the engine keeps from batch to batch, the profiles and their attachments, as a
        digest (CONFIG_DIGEST) read in the transaction's snapshot: other workers and the CLI write
        the same database, so there is no local change count to look at, but equal digests mean
        equal contents. One query per transaction (asked again, the first answer holds until the
        transaction writes a profile or an attachment itself); outside a transaction a fresh
        object: never claim that nothing changed."""
        if not self._depth:
            return object()
        with self._lock:
            if self._marker is None:
                self._marker = self._execute(CONFIG_DIGEST, ()).fetchone()[0]
            return self._marker

    def _reconnect_if_closed(self) -> None:
        if self._conn.closed or self._conn.info.transaction_status == psycopg.pq.TransactionStatus.UNKNOWN:
            try:
                self._conn.close()
            finally:
                self._conn = self._connect()

    def _raise(self, exc: Exception) -> NoReturn:
        """Raise a psycopg error that surfaced late (a pipelined statement's) as _execute would."""
        error = self._error(exc)
        if error is exc:
            raise exc
        raise error from exc

    def _error(self, exc: Exception) -> Exception:
        if isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.LockNotAvailable)):
            return StoreConflict(f"database {self.path}: {_first_line(exc)}")
        return exc

    def _execute(self, sql: str, params: Iterable[Any]):
        params = tuple(params)
        with self._lock:
            if not self._depth:
                self._reconnect_if_closed()
            try:
                if self._savepoints and not self._savepoints[-1]:
                    self._open_savepoints()
                return self._conn.execute(pg_sql(sql) if params else sql, params or None)
            except psycopg.Error as exc:
                error = self._error(exc)
                if error is exc:
                    raise
                raise error from exc

    def _exec(self, sql: str, params: Iterable[Any] = ()):
        if writes_config(sql):
            self._marker = None
        self._unsynced = True
        cursor = self._execute(sql, params)
        return cursor if self._pipe is None else _Pipelined(cursor, self._pipe, self)

    def _many(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """One statement for many parameter rows (group commit)."""
        if writes_config(sql):
            self._marker = None
        self._unsynced = True
        with self._lock:
            if self._savepoints and not self._savepoints[-1]:
                self._open_savepoints()
            with self._conn.cursor() as cur:
                cur.executemany(pg_sql(sql), [tuple(r) for r in rows])

    def _in(self, column: str, values: Sequence[Any]) -> Tuple[str, List[Any]]:
        return f"{column} = ANY(?)", [list(values)]  # one statement text whatever the count

    def _rows_together(self, queries: Sequence[Tuple[str, Sequence[Any]]]) -> List[List[Any]]:
        """In a transaction the reads go out together and their rows come back in one round trip."""
        with self._lock:
            if self._pipe is None:
                return [self._rows(sql, params) for sql, params in queries]
            cursors = [self._execute(sql, params) for sql, params in queries]
            try:
                return [cursor.fetchall() for cursor in cursors]
            except psycopg.Error as exc:
                self._raise(exc)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> List[StoreRow]:
        with self._lock:
            cursor = self._execute(sql, params)
            try:  # in a pipeline, the statement's error (or an earlier one's) surfaces here
                return cursor.fetchall()
            except psycopg.Error as exc:
                self._raise(exc)

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Optional[StoreRow]:
        with self._lock:
            cursor = self._execute(sql, params)
            try:
                return cursor.fetchone()
            except psycopg.Error as exc:
                self._raise(exc)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
