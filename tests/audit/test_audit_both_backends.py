"""The audit's tasks, findings and suppressions on both backends (SQLite, PostgreSQL): listings
sort by the `seq` column the audit store keeps, not SQLite's rowid; tables from before it are migrated."""
import json
import sqlite3

import pytest

from garrison.detect import cli
from garrison.detect.audit.store import AuditStore
from garrison.detect.console.prometheus import _latest_audit
from garrison.detect.state.store import Store

from helpers import DAY, NOW, fleet, plant

CHECK = "DEVICE_CERTIFICATE_EXPIRING_CHECK"


@pytest.fixture
def pki_dir(tmp_path):
    ca = fleet(tmp_path / "pki")
    for name in ("expired-1", "expired-2", "expired-3"):
        plant(ca, name, not_after=NOW - DAY)
    return ca.dir


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_audit_commands_on_each_backend(any_db, pki_dir, capsys):
    first = json.loads(run(capsys, "audit", "run", "--db", any_db, "--pki", str(pki_dir), "--json"))
    second = json.loads(run(capsys, "audit", "run", "--db", any_db, "--pki", str(pki_dir), "--json"))
    assert len(second["findings"]) == 3
    tasks = json.loads(run(capsys, "audit", "tasks", "--db", any_db, "--json"))["tasks"]
    assert [t["taskId"] for t in tasks] == [second["taskId"], first["taskId"]]   # newest first
    # the latest task's findings, in the order the task found them, filtered by check
    listed = json.loads(run(capsys, "audit", "findings", "--db", any_db, "--check", CHECK, "--json"))["findings"]
    assert listed == second["findings"]
    assert {f["severity"] for f in listed} == {second["findings"][0]["severity"]} and listed[0]["severity"]
    assert json.loads(run(capsys, "audit", "findings", "--db", any_db, "--check", "LOGGING_DISABLED_CHECK",
                          "--json"))["findings"] == []
    listed = json.loads(run(capsys, "audit", "findings", "--db", any_db, "--task", first["taskId"], "--json"))
    assert listed["findings"] == first["findings"]
    # suppress one finding: the next task reports it suppressed
    cert_id = listed["findings"][0]["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]
    run(capsys, "audit", "suppress", "--db", any_db, "--check", CHECK, "--resource", cert_id, "--indefinitely")
    third = json.loads(run(capsys, "audit", "run", "--db", any_db, "--pki", str(pki_dir), "--json"))
    suppressed = {f["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]: f["isSuppressed"]
                  for f in third["findings"]}
    assert suppressed[cert_id] is True and sum(suppressed.values()) == 1
    assert third["auditDetails"][CHECK]["suppressedNonCompliantResourcesCount"] == 1
    assert [s["resourceKey"] for s in json.loads(
        run(capsys, "audit", "suppressions", "--db", any_db, "--json"))["suppressions"]] == [cert_id]
    run(capsys, "audit", "unsuppress", "--db", any_db, "--check", CHECK, "--resource", cert_id)
    assert json.loads(run(capsys, "audit", "suppressions", "--db", any_db, "--json"))["suppressions"] == []


def task_doc(task_id, start, count):
    return {"taskId": task_id, "taskType": "ON_DEMAND_AUDIT_TASK", "taskStatus": "COMPLETED",
            "taskStartTime": start, "auditDetails": {CHECK: {"nonCompliantResourcesCount": count}}}


def finding(task_id, n):
    return {"findingId": f"{task_id}-{n}", "taskId": task_id, "checkName": CHECK}


def test_latest_task_for_metrics_on_each_backend(any_db):
    astore = AuditStore(Store(any_db))
    assert _latest_audit(astore.store) == {} and astore.latest_task_id() is None
    astore.save_task(task_doc("b-older", 100.0, 5), [], [])
    # two tasks started in the same millisecond: the one saved last is the latest; finding ids
    # that sort the other way keep the order they were saved in
    astore.save_task(task_doc("z-first", 200.0, 1), [finding("z-first", n) for n in (9, 3, 7)], ["r9", "r3", "r7"])
    astore.save_task(task_doc("a-second", 200.0, 2), [finding("a-second", n) for n in (2, 1)], ["r2", "r1"])
    assert astore.latest_task_id() == "a-second"
    assert _latest_audit(astore.store) == {CHECK: {"nonCompliantResourcesCount": 2}}
    assert [t["taskId"] for t in astore.list_tasks()] == ["a-second", "z-first", "b-older"]
    assert [f["findingId"] for f in astore.findings()] == ["z-first-9", "z-first-3", "z-first-7",
                                                           "a-second-2", "a-second-1"]
    assert [f["findingId"] for f in astore.findings("z-first", CHECK)] == ["z-first-9", "z-first-3", "z-first-7"]


# the audit tables as they were before `seq` (SQLite types; the PostgreSQL store translates them)
OLD_SCHEMA = """
CREATE TABLE audit_tasks (
    task_id TEXT PRIMARY KEY, task_type TEXT NOT NULL, task_status TEXT NOT NULL,
    start_ms INTEGER NOT NULL, scheduled_name TEXT, doc TEXT NOT NULL);
CREATE TABLE audit_findings (
    finding_id TEXT PRIMARY KEY, task_id TEXT NOT NULL REFERENCES audit_tasks(task_id) ON DELETE CASCADE,
    check_name TEXT NOT NULL, resource_key TEXT NOT NULL, doc TEXT NOT NULL)
"""


def test_audit_tables_from_before_seq_are_migrated(any_db):
    store = Store(any_db)
    store.create_tables(OLD_SCHEMA)
    with store.transaction():
        for task_id, start in (("z-old", 100.0), ("a-old", 100.0)):
            store._exec("INSERT INTO audit_tasks VALUES (?, ?, ?, ?, ?, ?)",
                        (task_id, "ON_DEMAND_AUDIT_TASK", "COMPLETED", int(start * 1000), None,
                         json.dumps(task_doc(task_id, start, 0))))
        for n in (5, 1, 3):
            store._exec("INSERT INTO audit_findings VALUES (?, ?, ?, ?, ?)",
                        (f"z-old-{n}", "z-old", CHECK, f"r{n}", json.dumps(finding("z-old", n))))
    store.close()
    astore = AuditStore(Store(any_db))
    if not any_db.startswith("postgresql"):   # SQLite's old rows keep the order rowid gave them
        assert astore.latest_task_id() == "a-old"
        assert [f["findingId"] for f in astore.findings("z-old")] == ["z-old-5", "z-old-1", "z-old-3"]
    assert len(astore.findings("z-old")) == 3
    astore.save_task(task_doc("new", 100.0, 4), [finding("new", 2), finding("new", 1)], ["r2", "r1"])
    assert astore.list_tasks()[0]["taskId"] == "new"   # rows without seq sort as the oldest
    assert astore.latest_task_id() == "new" and _latest_audit(astore.store)[CHECK]["nonCompliantResourcesCount"] == 4
    assert [f["findingId"] for f in astore.findings()][-2:] == ["new-2", "new-1"]
    if not any_db.startswith("postgresql"):
        columns = [r[1] for r in sqlite3.connect(any_db).execute("PRAGMA table_info(audit_findings)")]
        assert "seq" in columns


def test_on_postgresql_two_connections_saving_at_once_get_distinct_seqs(pg_dsn):
    """A task saved while another connection's save is still uncommitted does not read the same
    MAX(seq) and sort as the same moment: on PostgreSQL saves are numbered by a sequence."""
    import threading

    def task(n):
        doc = {"taskId": f"t{n}", "taskType": "ON_DEMAND_AUDIT_TASK", "taskStatus": "COMPLETED",
               "taskStartTime": 1000.0}  # the same start: only seq orders them
        finding = {"findingId": f"f{n}", "taskId": f"t{n}", "checkName": CHECK}
        return doc, [finding], [f"cert-{n}"]

    first, second = Store(pg_dsn), Store(pg_dsn)
    saved = threading.Event()
    try:
        audits = AuditStore(first)
        with first.transaction():  # the first save, not committed yet
            audits.save_task(*task(1))
            other = threading.Thread(target=lambda: (AuditStore(second).save_task(*task(2)), saved.set()))
            other.start()
            assert saved.wait(10)  # not waiting for the first to commit
        other.join(10)
        tasks = [(r[0], r[1]) for r in first._rows("SELECT task_id, seq FROM audit_tasks ORDER BY task_id")]
        findings = [(r[0], r[1]) for r in first._rows("SELECT finding_id, seq FROM audit_findings ORDER BY finding_id")]
        assert [name for name, _ in tasks] == ["t1", "t2"] and tasks[0][1] < tasks[1][1]
        assert [name for name, _ in findings] == ["f1", "f2"] and findings[0][1] < findings[1][1]
        assert [t["taskId"] for t in AuditStore(first).list_tasks()] == ["t2", "t1"]
    finally:
        first.close()
        second.close()


def test_on_postgresql_the_sequence_starts_past_the_tasks_saved_before_it(pg_dsn):
    doc = {"taskId": "old", "taskType": "ON_DEMAND_AUDIT_TASK", "taskStatus": "COMPLETED", "taskStartTime": 1000.0}
    store = Store(pg_dsn)
    try:
        AuditStore(store).save_task(doc, [], [])
        with store.transaction():  # as the tables were before the sequence: seqs from MAX(seq) + 1
            store._exec("DROP SEQUENCE audit_seq")
            store._exec("UPDATE audit_tasks SET seq = 41")
    finally:
        store.close()
    store = Store(pg_dsn)  # opened again: the audit store makes the sequence once
    try:
        AuditStore(store).save_task(dict(doc, taskId="new"), [], [])
        seqs = dict((r[0], r[1]) for r in store._rows("SELECT task_id, seq FROM audit_tasks"))
        assert seqs["old"] == 41 and seqs["new"] > 41
        assert [t["taskId"] for t in AuditStore(store).list_tasks()] == ["new", "old"]
    finally:
        store.close()
