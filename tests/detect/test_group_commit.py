"""Engine.batch (group commit): the same results as one transaction per report, changes made
elsewhere reach a running engine, a failing report is undone alone, a busy store is StoreBusy."""
import json
import random
import sqlite3
import time

import pytest

from garrison.agent import report
from garrison.collectors.base import Connection, ListeningSocket
from garrison.detect.clock import ManualClock
from garrison.detect.engine import Engine
from garrison.detect.ingest.frontdoor import Ingestor, Retry
from garrison.detect.ingest.validate import validate
from garrison.detect.state.store import Store, StoreBusy

T0 = 1_800_000_000_000
PROFILE = {"securityProfileName": "P", "behaviors": [
    {"name": "conns", "metric": "aws:num-established-tcp-connections",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 5},
                  "consecutiveDatapointsToAlarm": 2, "consecutiveDatapointsToClear": 2}},
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 443]}}},
    {"name": "bytes", "metric": "aws:all-bytes-out",
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 5000}, "durationSeconds": 900}},
]}


def reports(seed=7, things=6, per_thing=30):
    """Validated reports, in time order, that raise and clear alarms on every behavior."""
    rng = random.Random(seed)
    out = []
    for r in range(per_thing):
        for t in range(things):
            ports = [ListeningSocket("tcp", 4, "0.0.0.0", p) for p in rng.choice(([22], [22, 443], [22, 8080]))]
            conns = [Connection(4, "10.0.0.2", 40000 + i, "192.0.2.1", 443, "eth0") for i in range(rng.randrange(9))]
            doc = report.build(T0 + r * 300_000, listening_tcp=ports, connections=conns,
                               network_stats={"bytes_out": rng.randrange(3000)})
            out.append((f"dev{t}", T0 + r * 300_000, validate(json.loads(report.encode(doc, "json")))))
    return out


def snapshot(store):
    """The engine's state, without random violation ids."""
    rows = lambda sql: [tuple(r) for r in store._rows(sql)]  # noqa: E731
    return {
        "things": rows("SELECT name, registered_ms, last_report_id, last_received_ms, reports FROM things ORDER BY name"),
        "states": rows("SELECT thing, profile, behavior, state FROM eval_state ORDER BY 1, 2, 3"),
        "violations": rows("SELECT thing, profile, behavior_name, start_ms, last_value, last_ms, additional_info, "
                           "end_ms, end_type FROM violations ORDER BY thing, behavior_name, start_ms"),
        "events": rows("SELECT event_type, time_ms, thing, profile, behavior, metric_value FROM violation_events "
                       "ORDER BY thing, time_ms, event_type"),
    }


def engine_at(path, groups=False):
    engine = Engine(Store(path), ManualClock(T0 / 1000), ml=None)
    engine.apply_profile(PROFILE, attach="all")
    if groups:  # a second profile on a group of some things
        engine.create_group("g")
        for thing in ("dev0", "dev3"):
            engine.add_to_group("g", thing)
        engine.apply_profile(dict(PROFILE, securityProfileName="Q", behaviors=PROFILE["behaviors"][:1]),
                             attach="group:g")
    return engine


@pytest.mark.parametrize("batch_size,groups", [(1, False), (7, True), (50, False)])
def test_a_batch_gives_what_one_transaction_per_report_gives(tmp_path, batch_size, groups):
    data = reports()
    one = engine_at(tmp_path / "one.db", groups)
    for thing, ms, doc in data:
        one.accept(thing, doc, ms)
    grouped = engine_at(tmp_path / "grouped.db", groups)
    for first in range(0, len(data), batch_size):
        with grouped.batch():
            for thing, ms, doc in data[first:first + batch_size]:
                grouped.accept(thing, doc, ms)
    expected, got = snapshot(one.store), snapshot(grouped.store)
    assert len(expected["events"]) > 20 and any(v[7] for v in expected["violations"])  # alarms and clears
    assert got == expected
    assert not groups or any(state[1] == "Q" for state in got["states"])


def test_changes_from_another_process_and_another_thread_reach_a_batching_engine(tmp_path):
    engine = engine_at(tmp_path / "e.db")
    data = reports(things=1, per_thing=3)
    with engine.batch():
        engine.accept(data[0][0], data[0][2], data[0][1])
    # the CLI (its own connection) replaces the profile: the next batch must see it
    cli = Engine(Store(tmp_path / "e.db"), ManualClock(T0 / 1000), ml=None)
    changed = dict(PROFILE, behaviors=[dict(PROFILE["behaviors"][1], name="ports2")])
    cli.apply_profile(changed)
    with engine.batch():
        engine.accept(data[1][0], data[1][2], data[1][1])
    assert {b for (_, b) in engine.store.states_of_thing("dev0")} == {"ports2"}
    # the API (this connection, another thread's work) detaches it: no evaluation at all
    engine.detach("P", "all")
    before = snapshot(engine.store)["states"]
    with engine.batch():
        engine.accept(data[2][0], data[2][2], data[2][1])
    assert engine.store.last_report("dev0")[0] == data[2][2]["header"]["report_id"]
    assert snapshot(engine.store)["states"] == before  # not stepped: the profile no longer applies


def test_a_thing_deleted_by_another_process_between_batches_is_registered_afresh(tmp_path):
    engine = engine_at(tmp_path / "e.db")
    data = reports(things=1, per_thing=3)
    for thing, ms, doc in data[:2]:
        with engine.batch():
            engine.accept(thing, doc, ms)
    assert engine.store.list_things()[0]["reports"] == 2
    cli = Engine(Store(tmp_path / "e.db"), ManualClock(T0 / 1000), ml=None)
    assert cli.delete_thing("dev0")
    with engine.batch():
        engine.accept(data[2][0], data[2][2], data[2][1])
    [thing] = engine.store.list_things()
    assert thing["reports"] == 1  # registered afresh, not counted on from the deleted row
    assert {b for (_, b) in engine.store.states_of_thing("dev0")} == {"conns", "ports", "bytes"}


def test_a_report_that_raises_is_undone_alone(tmp_path, monkeypatch):
    engine = engine_at(tmp_path / "e.db")
    data = reports(things=3, per_thing=1)
    evaluate = engine._evaluate

    def broken(thing, doc, ms):
        events = evaluate(thing, doc, ms)
        if thing == "dev1":
            raise RuntimeError("a bug")
        return events

    monkeypatch.setattr(engine, "_evaluate", broken)
    ingestor = Ingestor(engine, min_interval_s=0)
    messages = [(f"$aws/things/{thing}/defender/metrics/json", report.encode(doc, "json"), ms)
                for thing, ms, doc in data]
    outcomes = ingestor.handle_batch(messages)
    assert [type(o).__name__ for o in outcomes] == ["Reply", "Retry", "Reply"]
    assert outcomes[1].transient is False and "a bug" in outcomes[1].reason
    assert [t["thingName"] for t in engine.store.list_things()] == ["dev0", "dev2"]
    assert engine.store.states_of_thing("dev1") == {}
    assert len(engine.store.states_of_thing("dev2")) == 3


def test_a_write_locked_store_is_store_busy_and_nothing_is_written(tmp_path):
    engine = engine_at(tmp_path / "e.db")
    locker = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    thing, ms, doc = reports(things=1, per_thing=1)[0]
    started = time.monotonic()
    with pytest.raises(StoreBusy):
        with engine.batch(busy_timeout_ms=200):
            engine.accept(thing, doc, ms)
    assert time.monotonic() - started < 5  # not the store's 15 s
    outcome = Ingestor(engine, min_interval_s=0).handle_batch(
        [("$aws/things/dev0/defender/metrics/json", report.encode(doc, "json"), ms)])[0]
    assert isinstance(outcome, Retry) and outcome.transient
    locker.execute("ROLLBACK")
    assert engine.store.list_things() == []
    reply = Ingestor(engine, min_interval_s=0).handle_batch(
        [("$aws/things/dev0/defender/metrics/json", report.encode(doc, "json"), ms)])[0]
    assert reply.accepted and engine.store.last_report("dev0")[0] == doc["header"]["report_id"]


def test_batches_and_the_periodic_alert_dispatch_never_deadlock(tmp_path):
    """The ingest thread's batches mark alerts while `serve`'s main thread dispatches them on its
    ticks: both take the dispatch lock before the store's (the other order deadlocked a burst)."""
    import threading
    from engine_support import Collect
    engine = engine_at(tmp_path / "e.db")
    engine.alerts = Collect()
    stop = threading.Event()

    def ticks():
        while not stop.is_set():
            engine.dispatch_alerts()

    ticker = threading.Thread(target=ticks, daemon=True)
    ticker.start()
    data = reports(things=20, per_thing=10)
    done = threading.Event()

    def ingest():
        for first in range(0, len(data), 5):
            with engine.batch():
                for thing, ms, doc in data[first:first + 5]:
                    engine.accept(thing, doc, ms)
        done.set()

    threading.Thread(target=ingest, daemon=True).start()
    finished = done.wait(60)
    stop.set()
    assert finished, "deadlock between the batch and the alert dispatch"
    ticker.join(10)
    events = engine.store.list_events()
    assert len(engine.alerts.messages) == len(events) > 10 and not engine.store.pending_alerts()


def test_only_a_batch_that_raised_events_looks_at_the_alert_outbox(tmp_path):
    """A batch without events is one transaction; the outbox costs a second one only when the
    batch put something in it, and then its alerts leave at once (not at the next tick)."""
    from engine_support import Collect
    engine = engine_at(tmp_path / "e.db")
    engine.alerts = Collect()
    begun = []
    engine.store._conn.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)

    def batch_of_one(ms, **metrics):
        doc = validate(json.loads(report.encode(report.build(ms, **metrics), "json")))
        begun.clear()
        with engine.batch():
            return engine.accept("dev0", doc, ms)

    calm = {"listening_tcp": [ListeningSocket("tcp", 4, "0.0.0.0", 22)], "network_stats": {"bytes_out": 0}}
    for i in range(3):  # the first report registers the thing; alarms settle
        batch_of_one(T0 + i * 300_000, **calm)
    assert batch_of_one(T0 + 3 * 300_000, **calm) == [] and begun == ["BEGIN IMMEDIATE"]
    telnet = [ListeningSocket("tcp", 4, "0.0.0.0", 23)]
    events = batch_of_one(T0 + 4 * 300_000, listening_tcp=telnet, network_stats={"bytes_out": 0})
    assert events and begun == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE"]
    assert [m["violationId"] for m in engine.alerts.messages] == [e["violation_id"] for e in engine.store.list_events()]
