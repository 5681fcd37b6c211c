"""Group commit as the scale-out worker runs it (Ingestor.handle_batch -> Engine.batch) on both
backends: on PostgreSQL a batch's reads take a few round trips, not a few per report (counted in
libpq's own protocol trace, tests/scaleout.py ProtocolTrace); changes made through another connection (the CLI) reach the next
batch; a report that fails is undone alone, without taking earlier reports' writes with it; and
the batch path stores exactly what one transaction per report stores."""
import json
from pathlib import Path

import pytest

from garrison.agent import report
from garrison.detect.audit.store import AuditStore
from garrison.detect.clock import ManualClock
from garrison.detect.engine import Engine
from garrison.detect.ingest.frontdoor import Ingestor, Reply, Retry
from garrison.detect.state.store import Store

from engine_support import build
from scaleout import ProtocolTrace

T0 = 1_800_000_000_000
ROUND_MS = 300_000
EXAMPLES = Path(__file__).resolve().parents[2] / "detect" / "ops" / "examples"
POSTURE = {"posture:ssh_permit_root_login": 1, "posture:insecure_services": {"string_list": ["telnet:23/tcp"]}}


def gateway(report_id, extra_port=8080, posture=True, cpu=12.5, quiet=False):
    """A gateway-like report (the bench's shape, smaller): listeners, connections, traffic, posture;
    `quiet`, only ports 22 and 443 listening (what gateway-rules allows)."""
    tcp = [22, 443] if quiet else [22, 53, 80, 443, 1883, extra_port]
    return build(report_id=report_id, tcp_ports=tcp, udp_ports=[53, 123, 5353],
                 connections=12, network_stats={"bytes_in": 120_000, "bytes_out": 65_000, "packets_in": 900,
                                                "packets_out": 800},
                 custom=dict(POSTURE if posture else {}, cpu_usage=cpu))


def messages(things, rnd, **kwargs):
    """Round `rnd` of reports from `things`: (topic, payload, now_ms) as the worker hands them over."""
    report_id = T0 + rnd * ROUND_MS
    return [(f"$aws/things/{thing}/defender/metrics/json", report.encode(gateway(report_id, **kwargs), "json"),
             report_id + 1000) for thing in things]


def worker(db, *profiles, attach="all"):
    engine = Engine(Store(db), ManualClock(T0 / 1000), ml=None)
    for name in profiles:
        engine.apply_profile(str(EXAMPLES / f"{name}.json"), attach=attach)
    return engine, Ingestor(engine, min_interval_s=0)


def accepted(outcomes):
    return all(isinstance(o, Reply) and o.accepted for o in outcomes)


def test_a_batch_reads_its_things_in_a_few_round_trips_on_postgresql(pg_dsn):
    """Before: the worker waited on the server about 10 times per report with these two profiles
    (the thing's row twice, its states, the open violation of each violating behavior, the
    threshold of each statistical behavior; 206 round trips and 566 statements for this batch of
    20). Now the batch's reads go out together: 3 round trips per batch, reads included."""
    engine, ingestor = worker(pg_dsn, "aws-rule-based", "aws-statistical")
    things = [f"gw{i}" for i in range(20)]
    for rnd in range(4):  # registration, alarms raised: the steady state comes after
        assert accepted(ingestor.handle_batch(messages(things, rnd)))
    costs = []
    for rnd in (4, 5):
        with ProtocolTrace(engine.store) as trace:
            assert accepted(ingestor.handle_batch(messages(things, rnd)))
        costs.append((trace.round_trips, trace.statements))
    for round_trips, statements in costs:
        # BEGIN + the profiles' digest; the batch's things + thresholds; the writes + COMMIT
        assert round_trips <= 3, costs
        # per report the held-back writes alone (the thing row, states, fleet samples, violation
        # values, latest report, history, posture), one executemany each for the batch
        assert statements <= 17 * len(things), costs
    # the batch did work: states of both profiles, violations kept up to date
    assert {p for p, _ in engine.store.states_of_thing("gw0")} == {"gateway-rules", "fleet-statistical"}
    assert engine.store.list_violations(active_only=True, thing="gw0")


def test_changes_from_another_connection_reach_a_batching_worker_in_the_next_batch(any_db):
    engine, ingestor = worker(any_db)
    cli = Engine(Store(any_db), ManualClock(T0 / 1000), ml=None)  # its own connection, as the CLI
    ports = {"securityProfileName": "P", "behaviors": [
        {"name": "ports", "metric": "aws:listening-tcp-ports",
         "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22, 53, 80, 443, 1883]}}}]}
    cli.apply_profile(ports, attach="all")
    assert accepted(ingestor.handle_batch(messages(["d1", "d2"], 0)))
    assert [v["behavior"]["name"] for v in engine.active_violations("d1")] == ["ports"]  # 8080 is not allowed
    assert accepted(ingestor.handle_batch(messages(["d1", "d2"], 1)))  # profiles kept from batch to batch

    # the same behavior names, another document: 8080 allowed now
    allowed = json.loads(json.dumps(ports))
    allowed["behaviors"][0]["criteria"]["value"]["ports"].append(8080)
    cli.apply_profile(allowed)
    assert accepted(ingestor.handle_batch(messages(["d1", "d2"], 2)))
    assert engine.active_violations("d1") == []  # a stale profile would have opened a new one
    assert engine.store.get_state("d1", "P", "ports")["violating"] == 0

    # moved from all things to a group holding d2 (as many attachments as before)
    cli.create_group("g")
    cli.add_to_group("g", "d2")
    cli.detach("P", "all")
    cli.attach("P", "group:g")
    before = engine.store.states_of_thing("d1")
    assert accepted(ingestor.handle_batch(messages(["d1", "d2"], 3, extra_port=9999)))
    assert engine.store.states_of_thing("d1") == before  # no longer evaluated
    assert engine.store.last_report("d1")[0] == T0 + 3 * ROUND_MS
    assert [v["behavior"]["name"] for v in engine.active_violations("d2")] == ["ports"]  # 9999 is not allowed

    cli.remove_from_group("g", "d2")  # d2's episode is invalidated with it
    before = engine.store.states_of_thing("d2")
    assert accepted(ingestor.handle_batch(messages(["d1", "d2"], 4, extra_port=9999)))
    assert engine.store.states_of_thing("d2") == before and engine.active_violations() == []

    cli.delete_thing("d2")
    assert accepted(ingestor.handle_batch(messages(["d1", "d2"], 5)))
    d2 = next(t for t in engine.list_things() if t["thingName"] == "d2")
    assert d2["reports"] == 1 and d2["groups"] == []  # registered afresh
    engine.store.close()
    cli.store.close()


def test_a_report_whose_statement_fails_is_undone_alone(any_db, monkeypatch):
    """On PostgreSQL the failed statement used to stop the whole pipeline: every report of the
    batch was handed back (Retry), the good ones with it, again on every attempt."""
    engine, ingestor = worker(any_db, "aws-rule-based")
    evaluate = engine._evaluate

    def broken(thing, doc, ms):
        events = evaluate(thing, doc, ms)
        if thing == "d1":
            engine.store._rows("SELECT * FROM no_such_table")
        return events

    monkeypatch.setattr(engine, "_evaluate", broken)
    outcomes = ingestor.handle_batch(messages(["d0", "d1", "d2"], 0))
    assert [type(o) for o in outcomes] == [Reply, Retry, Reply]
    assert outcomes[1].transient is False and "no_such_table" in outcomes[1].reason
    assert [t["thingName"] for t in engine.list_things()] == ["d0", "d2"]
    assert len(engine.store.states_of_thing("d2")) == 10


def test_a_failing_report_keeps_the_writes_earlier_reports_of_its_batch_held_back(any_db, monkeypatch):
    """A violation that starts writes what the batch held back so far inside the report's
    savepoint: when that report then failed, its rollback took the earlier reports' writes with
    it, although they had been answered ACCEPTED (their last report, states, history were lost)."""
    engine, ingestor = worker(any_db, "aws-rule-based")
    assert accepted(ingestor.handle_batch(messages(["d0", "d1"], 0, quiet=True)))  # nothing violates
    evaluate = engine._evaluate

    def broken(thing, doc, ms):
        events = evaluate(thing, doc, ms)
        if thing == "d1":
            assert events  # an episode started: the batch's held-back writes went out in here
            raise RuntimeError("a bug")
        return events

    monkeypatch.setattr(engine, "_evaluate", broken)
    outcomes = ingestor.handle_batch(messages(["d0", "d1"], 1))
    assert [type(o) for o in outcomes] == [Reply, Retry]
    assert engine.store.last_report("d0")[0] == T0 + ROUND_MS  # d0's report, answered ACCEPTED, is applied
    assert engine.store.last_report("d1")[0] == T0
    assert engine.store.list_things()[0]["reports"] == 2
    assert engine.store.metric_values("d0", "aws:listening-tcp-ports", T0, T0 + ROUND_MS)[-1][0] == T0 + ROUND_MS


@pytest.mark.parametrize("whole", [False, True], ids=["a-batch-per-round", "one-batch-for-all"])
def test_a_batch_stores_what_one_transaction_per_report_stores(any_db, tmp_path, whole):
    """Prefetched rows, held-back writes (states, fleet samples, violation values, posture,
    history) and cached thresholds against the plain path, on a SQLite file; `whole`: every
    report in one batch, so each thing's later reports find what its earlier ones changed."""
    def run(db, batched):
        engine, ingestor = worker(db, "aws-rule-based", "aws-statistical")
        engine.create_group("g")
        engine.add_to_group("g", "d3")
        engine.apply_profile(str(EXAMPLES / "aws-custom-metrics.json"), attach="group:g")
        engine.store.put_threshold("fleet-statistical", "BytesOutP90", 60_000.0, 5, T0)  # violated
        things = [f"d{i}" for i in range(6)]
        rounds = [messages(things, rnd, quiet=rnd % 3 == 0, posture=rnd != 4, cpu=95 if rnd else 5)
                  for rnd in range(6)]
        for batch in [sum(rounds, [])] if whole and batched else rounds:
            outcomes = (ingestor.handle_batch(batch) if batched
                        else [ingestor.handle(topic, payload, now) for topic, payload, now in batch])
            assert accepted(outcomes)
        rows = lambda sql: [tuple(r) for r in engine.store._rows(sql)]  # noqa: E731
        return {
            "things": rows("SELECT name, registered_ms, last_report_id, last_received_ms, reports FROM things "
                           "ORDER BY name"),
            "states": rows("SELECT thing, profile, behavior, state, updated_ms FROM eval_state ORDER BY 1, 2, 3"),
            "violations": rows("SELECT thing, profile, behavior_name, start_ms, last_value, last_ms, "
                               "additional_info, end_ms, end_type FROM violations ORDER BY 1, 2, 3, 4"),
            "events": rows("SELECT event_type, time_ms, thing, profile, behavior FROM violation_events "
                           "ORDER BY thing, time_ms, event_type, profile, behavior"),
            "samples": rows("SELECT profile, behavior, thing, time_ms, value FROM fleet_samples ORDER BY 1, 2, 3"),
            "history": rows("SELECT thing, time_ms, source, doc FROM metric_values ORDER BY 1, 2, 3"),
            "latest": rows("SELECT thing, time_ms FROM latest_reports ORDER BY 1"),
            "posture": sorted(AuditStore(engine.store).postures().items()),
        }

    expected, got = run(str(tmp_path / "one.db"), batched=False), run(any_db, batched=True)
    assert expected["events"] and expected["samples"] and expected["posture"]
    assert any(v[7] for v in expected["violations"])  # episodes ended too
    assert {s[1] for s in expected["states"]} == {"gateway-rules", "fleet-statistical", "custom-metrics"}
    assert got == expected


def test_a_report_with_posture_metrics_is_accepted_and_its_posture_kept(any_db):
    """DEVICE_HARDENING_CHECK's input: the posture of each thing's latest report that had one, on
    both backends (a hardened device's posture:* metrics must never fail its report)."""
    engine, ingestor = worker(any_db, "aws-rule-based")
    assert accepted(ingestor.handle_batch(messages(["d0", "d1"], 0)))
    assert accepted([ingestor.handle(*messages(["d2"], 0)[0])])  # one transaction per report
    assert accepted(ingestor.handle_batch(messages(["d0"], 1, posture=False)))  # none: the last one stays
    postures = AuditStore(engine.store).postures()
    assert sorted(postures) == ["d0", "d1", "d2"]
    assert postures["d0"]["time_ms"] == T0
    assert postures["d0"]["metrics"]["posture:insecure_services"] == [{"string_list": ["telnet:23/tcp"]}]



def test_a_write_conflict_inside_a_report_hands_the_whole_batch_back_as_transient(pg_dsn, monkeypatch):
    """A concurrent update of a row the batch writes (the periodic worker, the CLI) is a
    serialization failure: transient, so the batch is handed back whole and done again later, not
    counted against the report as a failure of its own (which leads to the dead letters)."""
    import psycopg
    engine, ingestor = worker(pg_dsn, "aws-rule-based")
    assert accepted(ingestor.handle_batch(messages(["d0", "d1"], 0)))
    evaluate = engine._evaluate

    def conflicting(thing, doc, ms):
        if thing == "d1":  # after the batch's snapshot: another connection changes d1's row
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute("UPDATE things SET reports = reports WHERE name = 'd1'")
            engine.store._exec("UPDATE things SET reports = reports WHERE name = ?", ("d1",)).rowcount  # noqa: B018
        return evaluate(thing, doc, ms)

    monkeypatch.setattr(engine, "_evaluate", conflicting)
    outcomes = ingestor.handle_batch(messages(["d0", "d1", "d2"], 1))
    assert all(isinstance(o, Retry) and o.transient for o in outcomes), outcomes
    assert engine.store.last_report("d0")[0] == T0 and engine.store.last_report("d2") is None  # nothing written
