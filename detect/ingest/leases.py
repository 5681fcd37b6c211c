"""Which worker owns which partition: PostgreSQL advisory locks held on a worker's own session.

The scale-out deployment (docs/scale-out.md) splits the fleet into P partitions (NATS subject
mapping by thing); a partition's reports must be handled by one worker at a time, so that a
thing's state is only ever written by one process. A worker owns partition p while it holds the
session-level advisory lock (OWN, p) on its lease connection. The lock needs no clock and no
expiry: PostgreSQL releases it the moment that session ends, and a worker killed with -9 has its
socket closed by the kernel, so another worker can take its partitions on its next poll (TCP
keepalives cover a machine that vanishes). A worker whose lease connection fails stops
consuming at once: it no longer owns anything.

Preference and hand-back: every worker names its preferred partitions (`--worker-index I
--workers N`: p % N == I; or `--partitions 0,3`) and holds a shared lock (WANT, p) on each while
it runs. A free partition that nobody alive prefers is taken by any worker (takeover); a worker
holding a partition that another live worker prefers hands it back (it finishes the batch in
hand, acknowledges it, then unlocks), so a restarted worker gets its partitions back and the
load spreads again. The same session holds (OWN, PERIODIC): the one worker that runs the
periodic work (sweep, fleet statistics, the alert outbox) for the whole database.
"""

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Set

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("garrison.leases")

OWN = 0x47415231  # "GAR1": (OWN, p) is held by the worker consuming partition p
WANT = 0x47415232  # "GAR2": (WANT, p) is held (shared) by every live worker preferring p
SINGLETON = 0x47415233  # "GAR3": process-wide roles, below
PERIODIC = 1  # (SINGLETON, PERIODIC): the worker running periodic work
SERVE_MQTT = 2  # (SINGLETON, SERVE_MQTT): the one MQTT-fed `serve` on a PostgreSQL database
POLL_S = 0.5


def _connect(dsn: str, name: str) -> "psycopg.Connection[Any]":
    import psycopg

    # keepalives: a worker whose machine vanished loses its locks within ~15 s, not hours
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=5,
        application_name=name[:63],
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=5,
    )


def _one_value(cursor: "psycopg.Cursor[Any]") -> Any:
    """The value of a query that returns one row of one column (the lock functions)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a lease query returned no row")
    return row[0]


class PartitionLeases:
    """Hold the advisory locks of the partitions this worker owns; call `on_acquire(p)` after
    taking one and `on_release(p)` (which must return only when nothing of p is being handled
    any more) before letting one go, from this object's thread."""

    def __init__(
        self,
        dsn: str,
        partitions: int,
        preferred: Iterable[int],
        on_acquire: Callable[[int], None],
        on_release: Callable[[int], None],
        takeover: bool = True,
        periodic: bool = True,
        name: str = "garrison-detect",
        poll_s: float = POLL_S,
    ):
        self.dsn, self.partitions, self.name = dsn, partitions, name
        self.preferred = sorted(set(preferred))
        self.on_acquire, self.on_release = on_acquire, on_release
        self.takeover, self.want_periodic, self.poll_s = takeover, periodic, poll_s
        self.held: Set[int] = set()
        self.periodic = False  # whether this worker runs the periodic work now
        self._conn: Optional["psycopg.Connection[Any]"] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "PartitionLeases":
        self._thread = threading.Thread(target=self._run, name="garrison-leases", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Hand every partition back (finishing the batches in hand) and end the session."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.poll_s
        while not self._stop.is_set():
            try:
                self._poll()
                delay = self.poll_s
            except Exception as exc:  # the session is gone: so are its locks
                self._lost(exc)
                delay = min(delay * 2, 5.0)
            self._stop.wait(delay)
        self._release_all()

    def _poll(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = _connect(self.dsn, self.name)
            for p in self.preferred:
                conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", (WANT, p))
            log.info("lease session open; preferred partitions %s of %d", _ranges(self.preferred), self.partitions)
        execute = conn.execute
        if self.want_periodic and not self.periodic:
            self.periodic = _one_value(execute("SELECT pg_try_advisory_lock(%s, %s)", (SINGLETON, PERIODIC)))
            if self.periodic:
                log.info("this worker runs the periodic work (sweep, fleet statistics, alert outbox)")
        else:
            execute("SELECT 1")  # the session is alive, so the locks are still ours
        for p in self.preferred:
            if p not in self.held:
                self._try(conn, p)
        wanted = {
            row[0]
            for row in execute(
                "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = %s AND objsubid = 2 "
                "AND granted AND pid <> pg_backend_pid()",
                (WANT,),
            )
        }
        for p in sorted(self.held - set(self.preferred)):
            if p in wanted:  # its preferred worker is back: hand it over
                log.info("handing partition %d back to the worker that prefers it", p)
                self._release(p)
        if self.takeover:
            for p in range(self.partitions):
                if p not in self.held and p not in wanted and p not in self.preferred:
                    self._try(conn, p)

    def _try(self, conn: "psycopg.Connection[Any]", p: int) -> None:
        if _one_value(conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (OWN, p))):
            self.held.add(p)
            log.info("took partition %d", p)
            try:
                self.on_acquire(p)
            except Exception:
                log.exception("could not start consuming partition %d; letting it go", p)
                self._release(p)

    def _release(self, p: int) -> None:
        try:
            self.on_release(p)
        finally:
            self.held.discard(p)
            if self._conn is not None and not self._conn.closed:
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", (OWN, p))

    def _lost(self, exc: Exception) -> None:
        if self._stop.is_set():
            return
        log.error(
            "lease session lost (%s): stopping partitions %s",
            str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__,
            _ranges(sorted(self.held)) or "none",
        )
        self.periodic = False
        for p in sorted(self.held):
            try:
                self.on_release(p)
            except Exception:
                log.exception("stopping partition %d failed", p)
        self.held.clear()
        self._close()

    def _release_all(self) -> None:
        self.periodic = False
        for p in sorted(self.held):
            try:
                self._release(p)
            except Exception:
                log.exception("releasing partition %d failed", p)
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


class ExclusiveLock:
    """One advisory lock held by a dedicated session for the life of the process (close() ends it)."""

    def __init__(self, dsn: str, key: int, what: str):
        self._conn = _connect(dsn, "garrison-detect")
        if not _one_value(self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (SINGLETON, key))):
            self._conn.close()
            raise RuntimeError(what)

    def close(self) -> None:
        self._conn.close()


def _ranges(values) -> str:
    return ",".join(map(str, values))
