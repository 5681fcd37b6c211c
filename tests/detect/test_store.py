"""garrison.detect.state.store on real SQLite files and a real PostgreSQL server (same behaviour)."""
import sqlite3

import pytest

from garrison.detect.state import store as store_module

from garrison.detect.state.store import MAX_PROFILES_PER_TARGET, NotFound, Store, StoreError

T0 = 1_700_000_000_000


@pytest.fixture
def store(any_db):
    s = Store(any_db)
    s.db = any_db
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store(tmp_path / "engine.db")
    yield s
    s.close()


def _integrity_errors():
    errors = [sqlite3.IntegrityError]
    try:
        import psycopg
        errors.append(psycopg.IntegrityError)
    except ImportError:
        pass
    return tuple(errors)


def test_the_file_is_in_wal_mode_and_has_the_schema(tmp_path, sqlite_store):
    conn = sqlite3.connect(tmp_path / "engine.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"things", "thing_groups", "group_members", "profiles", "attachments", "eval_state", "violations",
            "violation_events", "fleet_samples", "fleet_thresholds", "action_log"} <= tables


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"this is not sqlite\n" * 100)
    with pytest.raises(StoreError, match="is not a (Garrison )?database"):
        Store(bad)


def test_things_register_once_and_keep_their_last_report(store):
    assert store.register_thing("dev1", T0) is True
    assert store.register_thing("dev1", T0 + 5) is False
    assert store.last_report("dev1") == (None, None)
    store.record_report("dev1", 42, T0 + 10)
    assert store.last_report("dev1") == (42, T0 + 10)
    assert store.last_report("ghost") is None
    [thing] = store.list_things()
    assert thing == {"thingName": "dev1", "registeredTime": T0 / 1000, "preRegistered": False, "lastReportId": 42,
                     "lastReportTime": (T0 + 10) / 1000, "reports": 1, "groups": []}


def test_groups_and_membership(store):
    assert store.create_group("quarantine", T0)
    assert not store.create_group("quarantine", T0)
    assert store.add_to_group("quarantine", "dev1", T0)
    assert not store.add_to_group("quarantine", "dev1", T0)
    assert store.groups_of("dev1") == ["quarantine"]
    with pytest.raises(NotFound):
        store.add_to_group("nope", "dev1", T0)
    assert store.remove_from_group("quarantine", "dev1")
    assert store.groups_of("dev1") == []
    assert store.delete_group("quarantine")
    assert store.list_groups() == []


def test_profiles_apply_to_all_a_group_or_a_thing(store):
    for name in ("everyone", "cameras", "just-dev2"):
        store.put_profile(name, {"securityProfileName": name, "behaviors": []}, T0)
    store.create_group("cams", T0)
    store.add_to_group("cams", "dev1", T0)
    store.register_thing("dev1", T0)
    store.register_thing("dev2", T0)
    assert store.attach("everyone", "all")
    assert store.attach("cameras", "group:cams")
    assert store.attach("just-dev2", "thing:dev2")
    assert not store.attach("everyone", "all")  # already attached
    assert store.profiles_for_thing("dev1") == ["cameras", "everyone"]
    assert store.profiles_for_thing("dev2") == ["everyone", "just-dev2"]
    assert store.things_under_profile("cameras") == ["dev1"]
    assert store.things_under_profile("everyone") == ["dev1", "dev2"]
    assert store.things_under_profile("just-dev2") == ["dev2"]
    assert store.detach("everyone", "all")
    assert store.profiles_for_thing("dev1") == ["cameras"]


def test_at_most_five_profiles_per_target_and_targets_are_checked(store):
    for i in range(MAX_PROFILES_PER_TARGET + 1):
        store.put_profile(f"p{i}", {"securityProfileName": f"p{i}"}, T0)
    for i in range(MAX_PROFILES_PER_TARGET):
        store.attach(f"p{i}", "thing:dev1")
    with pytest.raises(StoreError, match="already has 5 security profiles"):
        store.attach(f"p{MAX_PROFILES_PER_TARGET}", "thing:dev1")
    assert store.attach(f"p{MAX_PROFILES_PER_TARGET}", "thing:dev2")  # another target is fine
    for bad in ("everything", "group:", "device:dev1"):
        with pytest.raises(StoreError, match="bad attachment target"):
            store.attach("p0", bad)
    with pytest.raises(NotFound):
        store.attach("p0", "group:missing")
    with pytest.raises(NotFound):
        store.attach("missing", "all")


def test_a_failed_transaction_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.register_thing("dev1", T0)
            store.create_group("g", T0)
            raise RuntimeError("crash in the middle")
    assert store.list_things() == [] and store.list_groups() == []


def test_another_connection_sees_committed_work_only(store):
    other = Store(store.db)
    try:
        store.register_thing("dev1", T0)
        assert [t["thingName"] for t in other.list_things()] == ["dev1"]
        other.put_state("dev1", "P", "b", {"alarm": True, "violating": 2}, T0)
        assert store.get_state("dev1", "P", "b") == {"alarm": True, "violating": 2}
    finally:
        other.close()


def test_one_open_violation_per_thing_profile_behavior_and_one_event_of_each_type(store):
    behavior = {"name": "b", "metric": "aws:num-listening-tcp-ports"}
    store.insert_violation("v1", "dev1", "P", behavior, {"count": 3}, T0, {})
    with pytest.raises(_integrity_errors()):
        store.insert_violation("v2", "dev1", "P", behavior, {"count": 4}, T0, {})
    assert store.insert_event("v1", "in-alarm", T0, "dev1", "P", behavior, {"count": 3}, {}, False) is not None
    assert store.insert_event("v1", "in-alarm", T0 + 1, "dev1", "P", behavior, {"count": 3}, {}, False) is None
    assert len(store.list_events()) == 1
    store.close_violation("v1", "alarm-cleared", T0 + 2)
    store.insert_violation("v2", "dev1", "P", behavior, {"count": 4}, T0 + 3, {})  # a new episode is fine
    assert [r["violation_id"] for r in store.list_violations(active_only=True)] == ["v2"]


def test_the_alert_outbox(store):
    behavior = {"name": "b"}
    store.insert_violation("v1", "dev1", "P", behavior, None, T0, {})
    store.insert_violation("v2", "dev1", "Q", behavior, None, T0, {})
    loud = store.insert_event("v1", "in-alarm", T0, "dev1", "P", behavior, None, {}, suppress_alerts=False)
    store.insert_event("v2", "in-alarm", T0, "dev1", "Q", behavior, None, {}, suppress_alerts=True)
    assert [r["seq"] for r in store.pending_alerts()] == [loud]
    store.mark_alerted(loud, T0 + 1)
    assert store.pending_alerts() == []


def test_fleet_samples_keep_each_devices_latest_value(store):
    store.put_sample("P", "b", "dev1", T0, 1.0)
    store.put_sample("P", "b", "dev1", T0 + 1000, 7.0)
    store.put_sample("P", "b", "dev2", T0 - 600_000, 3.0)
    assert store.samples("P", "b", since_ms=T0 - 300_000) == [("dev1", T0 + 1000, 7.0)]
    store.put_threshold("P", "b", 7.0, 1, T0)
    assert store.get_threshold("P", "b") == {"value": 7.0, "devices": 1, "computed_ms": T0}
    store.forget_behavior("P", "b")
    assert store.get_threshold("P", "b") is None and store.samples("P", "b", 0) == []


def test_the_action_audit_log(store):
    seq = store.log_action(T0, "dev1", {"type": "add-thing-to-group", "group": "q"}, True, "dry-run",
                           "would add", "v1", "P", "b")
    [entry] = store.list_actions()
    assert entry["seq"] == seq and entry["dryRun"] is True and entry["outcome"] == "dry-run"
    assert entry["action"] == {"type": "add-thing-to-group", "group": "q"} and entry["time"] == T0 / 1000
    assert store.list_actions(thing="other") == []


def test_an_older_schema_is_migrated_in_place_and_a_newer_one_is_refused(any_db, monkeypatch):
    Store(any_db).close()                                             # written at version 1
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(store_module.MIGRATIONS, 2, "ALTER TABLE things ADD COLUMN note TEXT")
    s = Store(any_db)
    try:
        s.register_thing("dev1", T0)
        s._exec("UPDATE things SET note = ? WHERE name = ?", ("migrated", "dev1"))
        assert s._one("SELECT note FROM things")[0] == "migrated"
        assert s._one("SELECT value FROM meta WHERE key = 'schema_version'")[0] == "2"
    finally:
        s.close()
    Store(any_db).close()                                             # already at 2: nothing to do
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 1)
    with pytest.raises(StoreError, match="newer Garrison"):
        Store(any_db)


def test_a_postgresql_url_that_cannot_be_reached_is_one_line_without_the_password():
    with pytest.raises(StoreError) as err:
        Store("postgresql://garrison:s3cret@127.0.0.1:1/garrison?connect_timeout=2")
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)
    assert "cannot open database postgresql://garrison:***@127.0.0.1:1/garrison" in str(err.value)


def test_a_modules_own_tables_and_the_latest_report_work_on_both_backends(store):
    from garrison.detect.state.latest import forget, latest_report, record_latest_report
    with store.transaction():  # the engine's hook runs inside the report's transaction
        record_latest_report(store, "dev1", {"header": {"report_id": 1}}, T0)
    record_latest_report(store, "dev1", {"header": {"report_id": 2}}, T0 + 300_000)  # replaces the row
    assert latest_report(store, "dev1") == {"time_ms": T0 + 300_000, "report": {"header": {"report_id": 2}}}
    forget(store, "dev1")
    assert latest_report(store, "dev1") is None
    assert store.create_tables("CREATE TABLE IF NOT EXISTS extra (k TEXT PRIMARY KEY, n INTEGER)") is True


def test_sql_stays_in_the_dialect_both_backends_speak():
    """SQLite-only statements (INSERT OR IGNORE / REPLACE) fail on PostgreSQL at the first report:
    the engine writes ON CONFLICT instead, everywhere (state, audit, console, history...)."""
    import re
    from pathlib import Path
    import garrison.detect
    offenders = [f"{path.name}:{n}" for path in Path(garrison.detect.__file__).parent.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"INSERT\s+OR\s+(IGNORE|REPLACE)", line)]
    assert offenders == []


def test_metric_history_reads_one_metric_on_both_backends(store):
    store.put_metric_values("cam-1", 1000, "report", {"aws:all-bytes-out": {"count": 3}})
    store.put_metric_values("cam-1", 2000, "report", {"aws:num-listening-tcp-ports": {"count": 1}})
    store.put_metric_values("cam-1", 3000, "report", {"aws:all-bytes-out": {"count": 5}, "x|d": {"count": 1}})
    store.put_metric_values("cam-2", 1500, "report", {"aws:all-bytes-out": {"count": 9}})
    assert store.metric_values("cam-1", "aws:all-bytes-out", 0, 10_000) == [(1000, {"count": 3}), (3000, {"count": 5})]
    assert store.metric_values("cam-1", "aws:all-bytes-out", 0, 10_000, limit=1) == [(1000, {"count": 3})]
    assert store.metric_values("cam-1", "aws:all-bytes-out", 0, 10_000, after_ms=1000) == [(3000, {"count": 5})]
    assert store.metric_values("cam-1", "x|d", 0, 2999) == []
