"""The on-disk spool: ordered, bounded (drops the oldest and counts them), crash-safe."""
import os
import time

from garrison.agent.spool import Spool


def test_entries_come_back_oldest_first(tmp_path):
    spool = Spool(tmp_path)
    for rid in (30, 10, 20):
        spool.add(rid, "json", b'{"id":%d}' % rid)
    assert [e.report_id for e in spool.entries()] == [10, 20, 30]
    assert spool.read(spool.entries()[0]) == b'{"id":10}'


def test_count_bound_drops_oldest_and_counts(tmp_path):
    spool = Spool(tmp_path, max_reports=3)
    for rid in range(1, 6):
        spool.add(rid, "cbor", b"x" * 10)
    assert [e.report_id for e in spool.entries()] == [3, 4, 5]
    assert spool.dropped == 2
    assert spool.take_unreported_drops() == 2
    assert spool.take_unreported_drops() == 0


def test_byte_bound_drops_oldest(tmp_path):
    spool = Spool(tmp_path, max_bytes=2500)
    for rid in range(1, 5):
        spool.add(rid, "json", b"y" * 1000)
    assert [e.report_id for e in spool.entries()] == [3, 4]
    assert spool.dropped == 2


def test_age_bound_drops_expired(tmp_path):
    spool = Spool(tmp_path, max_age=60)
    old = spool.add(1, "json", b"{}")
    os.utime(old.path, (time.time() - 3600, time.time() - 3600))
    spool.add(2, "json", b"{}")
    assert [e.report_id for e in spool.entries()] == [2]
    assert spool.dropped == 1


def test_interrupted_writes_are_cleaned_and_survive_restart(tmp_path):
    spool = Spool(tmp_path)
    spool.add(7, "json", b"{}")
    (tmp_path / ".00000000000000000008.json.123.tmp").write_bytes(b'{"half')   # a write cut by a crash
    reopened = Spool(tmp_path)
    assert [e.report_id for e in reopened.entries()] == [7]
    assert not list(tmp_path.glob(".*.tmp"))
