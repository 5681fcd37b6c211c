"""SQLite's write-ahead log copied back into the database file on a thread of its own.

By default the connection whose COMMIT takes the log past 1,000 pages copies it back inside
that COMMIT. In `serve` that connection is the ingest worker's, so now and then one batch of
reports paid for copying everybody's writes while the broker waited for its acknowledgements.
`WalCheckpointer` checkpoints from its own connection every `every_s` instead (PASSIVE: it never
waits for a writer or a reader, and what a writer appends meanwhile is left for the next round).
sqlite3 releases the GIL while it copies, so the copy runs beside the worker, on another core.
The worker's own automatic checkpoint stays as a backstop, raised to BACKSTOP_PAGES
(Store.wal_autocheckpoint), for a log this thread does not keep up with.
"""

import logging
import sqlite3
import threading
import time
from typing import Optional, Tuple

log = logging.getLogger("garrison.store")

EVERY_S = 0.25
BACKSTOP_PAGES = 4_000  # about 16 MB of log at SQLite's 4 KiB pages
_ERROR_LOG_EVERY_S = 60.0


class WalCheckpointer:
    """Checkpoints the SQLite database at `path` every `every_s` on a daemon thread until stop()."""

    def __init__(self, path: str, every_s: float = EVERY_S):
        self.path, self.every_s = str(path), every_s
        self.rounds = 0  # checkpoints that ran, and the last one's answer (read by tests)
        self.last: Optional[Tuple[int, int, int]] = None
        self._lock = threading.Lock()  # one statement at a time on the connection
        self._conn: Optional[sqlite3.Connection] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._error_logged = -_ERROR_LOG_EVERY_S

    def start(self) -> "WalCheckpointer":
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._thread = threading.Thread(target=self._run, name="garrison-checkpoint", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.checkpoint()

    def checkpoint(self) -> Optional[Tuple[int, int, int]]:
        """One PASSIVE checkpoint: (busy, frames in the log, how many of them are copied back), None
        on an error (logged at most once a minute; the next round tries again)."""
        assert self._conn is not None, "start() first"
        try:
            with self._lock:
                busy, in_log, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if time.monotonic() - self._error_logged >= _ERROR_LOG_EVERY_S:
                self._error_logged = time.monotonic()
                log.warning("cannot checkpoint %s (the engine's commits will): %s", self.path, exc)
            return None
        self.rounds += 1
        self.last = (busy, in_log, copied)
        return self.last

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
