"""garrison.detect.state.checkpoint: the write-ahead log is copied back by a thread of its own,
so the writer's commits (the ingest worker's, in `serve`) never do it, and the log stays small."""
import os
import sqlite3

import pytest

from garrison.detect.state.checkpoint import BACKSTOP_PAGES, WalCheckpointer
from garrison.detect.state.store import Store
from tests.fixtures import wait_for

ROW = os.urandom(16 * 1024)  # incompressible; SQLite does not compress anyway


def _write(db: str, transactions: int, between=lambda: None) -> int:
    """`transactions` commits of 4 rows of 16 KiB each through a Store whose own checkpoints wait
    for BACKSTOP_PAGES, calling `between()` after each; returns the largest the log file was."""
    store = Store(db)
    store.wal_autocheckpoint(BACKSTOP_PAGES)
    largest = 0
    try:
        with store.transaction():
            store._conn.execute("CREATE TABLE IF NOT EXISTS blobs (b BLOB)")
        for _ in range(transactions):
            with store.transaction():
                store._conn.executemany("INSERT INTO blobs VALUES (?)", [(ROW,)] * 4)
            largest = max(largest, os.path.getsize(db + "-wal"))
            between()
    finally:
        store.close()
    return largest


def test_without_checkpoints_the_log_grows_with_the_writes(tmp_path):
    # the control: 32 MiB of rows, and the writer copies the log back only at the backstop (16 MiB)
    assert _write(str(tmp_path / "engine.db"), 500) > 12 * 2**20


def test_a_checkpoint_between_commits_lets_the_writer_start_the_log_over(tmp_path):
    # the ingest worker commits a batch, then judges the next one: a checkpoint in that gap
    # copies everything, and the next commit writes from the start of the log again
    db = str(tmp_path / "engine.db")
    Store(db).close()
    checkpointer = WalCheckpointer(db)
    checkpointer._conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)  # no thread
    try:
        largest = _write(db, 500, between=checkpointer.checkpoint)
    finally:
        checkpointer.stop()
    assert largest < 2**20, largest
    assert checkpointer.rounds == 500
    busy, in_log, copied = checkpointer.last
    assert busy == 0 and in_log == copied >= 16  # the last commit (4 x 16 KiB), copied back
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 2000


def test_the_thread_copies_back_what_the_writer_commits(tmp_path):
    db = str(tmp_path / "engine.db")
    store = Store(db)
    store.wal_autocheckpoint(BACKSTOP_PAGES)
    checkpointer = WalCheckpointer(db, every_s=0.01).start()
    try:
        with store.transaction():
            store._conn.execute("CREATE TABLE blobs (b BLOB)")
            store._conn.executemany("INSERT INTO blobs VALUES (?)", [(ROW,)] * 50)
        # the writer stays open (closing the last connection would checkpoint): the thread did it
        wait_for(lambda: _all_copied(checkpointer.last), what="the commit copied back")
        assert checkpointer.last[1] >= 50 * 4  # 50 rows of 16 KiB: 200 pages and more
    finally:
        checkpointer.stop()
        store.close()


def _all_copied(last) -> bool:
    return last is not None and last[0] == 0 and last[1] == last[2] > 0


def test_stop_ends_the_thread_and_closes_its_connection(tmp_path):
    db = str(tmp_path / "engine.db")
    Store(db).close()
    checkpointer = WalCheckpointer(db, every_s=0.01).start()
    wait_for(lambda: checkpointer.rounds >= 2, what="two rounds")
    thread, conn = checkpointer._thread, checkpointer._conn
    checkpointer.stop()
    assert not thread.is_alive()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
