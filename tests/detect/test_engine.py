"""garrison.detect.engine fed validated reports, with a manual clock and a real SQLite file."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garrison.detect.respond.alerts import AlertDispatcher, LogTarget
from garrison.detect.clock import ManualClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.judge.profiles import ProfileError
from garrison.detect.state.store import NotFound, Store, StoreError

from engine_support import Collect, behavior, max_connections, profile, validated

DAY = 86400


@pytest.fixture
def db(any_db):
    return any_db  # a SQLite file, then a PostgreSQL database: the engine behaves the same on both


@pytest.fixture
def clock():
    return ManualClock()


def make_engine(db, clock, **config):
    alerts = Collect()
    engine = Engine(Store(db), clock, Config(**config), alerts=alerts)
    return engine, alerts


@pytest.fixture
def engine(db, clock):
    engine, alerts = make_engine(db, clock)
    engine.collected = alerts
    yield engine
    engine.store.close()


def feed(engine, clock, thing="dev1", every=300, **report):
    clock.advance(every)
    return engine.accept(thing, validated(**report), clock.now_ms())


def types(events):
    return [e.event_type for e in events]


def test_in_alarm_after_n_consecutive_violations_and_cleared_after_m(engine, clock):
    engine.apply_profile(max_connections(limit=5, to_alarm=3, to_clear=2), attach="all")
    assert types(feed(engine, clock, connections=9)) == []
    assert types(feed(engine, clock, connections=9)) == []
    assert types(feed(engine, clock, connections=1)) == []  # streak broken
    assert types(feed(engine, clock, connections=9)) == []
    assert types(feed(engine, clock, connections=9)) == []
    [start] = feed(engine, clock, connections=10)  # third in a row
    assert start.event_type == "in-alarm" and start.metric_value == {"count": 10}
    assert types(feed(engine, clock, connections=12)) == []
    [active] = engine.active_violations()
    assert active["violationId"] == start.violation_id and active["lastViolationValue"] == {"count": 12}
    assert types(feed(engine, clock, connections=1)) == []  # one conforming is not enough
    [end] = feed(engine, clock, connections=4)
    assert end.event_type == "alarm-cleared" and end.violation_id == start.violation_id
    assert engine.active_violations() == []
    assert [m["violationEventType"] for m in engine.collected.messages] == ["in-alarm", "alarm-cleared"]
    assert engine.collected.messages[0]["violationEventTime"] == start.time_ms  # alerts carry ms


def test_things_register_on_first_report_and_a_replayed_report_is_a_no_op(engine, clock):
    engine.apply_profile(max_connections(), attach="all")
    assert not engine.is_registered("dev1") and engine.last_report("dev1") is None
    clock.advance(300)
    report = validated(connections=9)
    [event] = engine.accept("dev1", report, clock.now_ms())
    assert engine.is_registered("dev1")
    assert engine.last_report("dev1") == (report["header"]["report_id"], clock.now_ms())
    clock.advance(1)
    assert engine.accept("dev1", report, clock.now_ms()) == []  # QoS 1 redelivery
    assert engine.store.list_things()[0]["reports"] == 1
    assert len(engine.violation_events()) == 1


def test_invalidation_after_two_days_of_silence(engine, clock):
    engine.apply_profile(max_connections(), attach="all")
    [start] = feed(engine, clock, connections=9)
    feed(engine, clock, thing="dev2", connections=1)  # 300 s later
    clock.advance(2 * DAY - 300 - 1)
    assert engine.sweep() == []  # dev1: one second short of two days
    clock.advance(2)
    [event] = engine.sweep()
    assert (event.event_type, event.violation_id, event.thing) == ("alarm-invalidated", start.violation_id, "dev1")
    assert event.additional_info["invalidationReason"] == "device-silent"
    assert engine.active_violations() == [] and engine.sweep() == []
    assert engine.collected.messages[-1]["violationEventType"] == "alarm-invalidated"
    # the device comes back: evaluation starts afresh and a new episode gets a new id
    [again] = feed(engine, clock, connections=9)
    assert again.event_type == "in-alarm" and again.violation_id != start.violation_id


def test_the_invalidation_period_is_configurable(db, clock):
    engine, _ = make_engine(db, clock, invalidation_period_s=3600)
    engine.apply_profile(max_connections(), attach="all")
    feed(engine, clock, connections=9)
    clock.advance(3601)
    assert types(engine.sweep()) == ["alarm-invalidated"]


def test_verification_state(engine, clock):
    engine.apply_profile(max_connections(), attach="all")
    [start] = feed(engine, clock, connections=9)
    record = engine.verify(start.violation_id, "BENIGN_POSITIVE", "nightly backup")
    assert record["verificationState"] == "BENIGN_POSITIVE"
    [active] = engine.active_violations()
    assert (active["verificationState"], active["verificationStateDescription"]) == (
        "BENIGN_POSITIVE",
        "nightly backup",
    )
    with pytest.raises(StoreError):
        engine.verify(start.violation_id, "PROBABLY_FINE")


def test_restart_continues_the_same_episodes_without_duplicates(db, clock):
    engine, alerts = make_engine(db, clock)
    engine.apply_profile(max_connections(to_clear=2), attach="all")
    [start] = feed(engine, clock, connections=9)
    feed(engine, clock, connections=1)  # half-way to clearing
    last = validated(connections=9)
    clock.advance(300)
    engine.accept("dev1", last, clock.now_ms())
    engine.store.close()

    engine, alerts = make_engine(db, clock)  # a new process on the same file
    assert engine.accept("dev1", last, clock.now_ms() + 5) == []  # the broker redelivers: no-op
    assert alerts.messages == []  # nothing sent twice
    [active] = engine.active_violations()
    assert active["violationId"] == start.violation_id
    assert types(feed(engine, clock, connections=1)) == []  # state survived: needs 2 to clear
    [end] = feed(engine, clock, connections=1)
    assert end.violation_id == start.violation_id
    events = engine.violation_events()
    assert [(e["violationEventType"], e["violationId"]) for e in events] == [
        ("in-alarm", start.violation_id),
        ("alarm-cleared", start.violation_id),
    ]
    engine.store.close()


def test_a_report_is_applied_entirely_or_not_at_all(db, clock):
    class Crashing(Engine):
        calls = 0

        def _step(self, *args):
            Crashing.calls += 1
            if Crashing.calls == 2:
                raise RuntimeError("killed between two behaviors")
            return super()._step(*args)

    engine = Crashing(Store(db), clock)
    engine.apply_profile(
        profile(
            "P",
            behavior("a", "aws:num-established-tcp-connections", "less-than", {"count": 5}),
            behavior("b", "aws:num-listening-tcp-ports", "less-than", {"count": 2}),
        ),
        attach="all",
    )
    report = validated(connections=9, tcp_ports=[1, 2, 3])
    with pytest.raises(RuntimeError):
        engine.accept("dev1", report, clock.now_ms())
    assert engine.last_report("dev1") is None  # report id not recorded
    assert engine.store.get_state("dev1", "P", "a") is None  # first behavior's state rolled back
    assert engine.violation_events() == []
    events = engine.accept("dev1", report, clock.now_ms())  # the redelivery applies it once
    assert sorted(e.behavior["name"] for e in events) == ["a", "b"]
    engine.store.close()


def test_profiles_attach_to_all_a_group_or_a_thing(engine, clock):
    engine.apply_profile(max_connections(limit=100, name="Fleet"), attach="all")
    engine.create_group("cameras")
    engine.add_to_group("cameras", "cam1")
    engine.apply_profile(max_connections(limit=5, name="Cameras"), attach="group:cameras")
    engine.apply_profile(max_connections(limit=2, name="Special"), attach="thing:dev9")
    assert {e.profile for e in feed(engine, clock, thing="cam1", connections=9)} == {"Cameras"}
    assert {e.profile for e in feed(engine, clock, thing="dev9", connections=9)} == {"Special"}
    assert feed(engine, clock, thing="other", connections=9) == []
    assert {e.profile for e in feed(engine, clock, thing="other", connections=200)} == {"Fleet"}


def test_at_most_five_profiles_per_target(engine):
    for i in range(5):
        engine.apply_profile(max_connections(name=f"P{i}"), attach="all")
    with pytest.raises(StoreError, match="5 security profiles"):
        engine.apply_profile(max_connections(name="P5"), attach="all")
    assert [p["securityProfileName"] for p in engine.store.list_profiles()] == [f"P{i}" for i in range(5)]


def test_bad_profiles_are_refused_before_anything_is_stored(engine):
    with pytest.raises(ProfileError):
        engine.apply_profile(profile("Bad", behavior("b", "aws:listening-tcp-ports", "less-than", {"count": 5})))
    assert engine.store.list_profiles() == []


def test_a_durations_behavior_sums_deltas_over_its_window(engine, clock):
    engine.apply_profile(
        profile("Traffic", behavior("out", "aws:all-bytes-out", "less-than", {"count": 1000}, durationSeconds=600)),
        attach="all",
    )
    assert feed(engine, clock, every=200, network_stats={"bytes_out": 400}) == []
    assert feed(engine, clock, every=200, network_stats={"bytes_out": 400}) == []  # 800 in the last 600 s
    [start] = feed(engine, clock, every=200, network_stats={"bytes_out": 400})  # 1200 > 1000
    assert start.metric_value == {"count": 1200}
    feed(engine, clock, every=200, network_stats={"bytes_out": 0})  # the first 400 left the window: 800
    assert engine.violation_events()[-1]["violationEventType"] == "alarm-cleared"


def test_statistical_threshold_from_the_fleet_shown_in_the_alarm(db, clock):
    engine, alerts = make_engine(db, clock, fleet_min_devices=5)
    engine.apply_profile(
        profile(
            "Stat",
            behavior(
                "conns",
                "aws:num-established-tcp-connections",
                "less-than-equals",
                statisticalThreshold={"statistic": "p90"},
                durationSeconds=900,
            ),
        ),
        attach="all",
    )
    for i in range(6):
        feed(engine, clock, thing=f"dev{i}", every=10, connections=10 + i)  # 10..15
    assert engine.recompute_fleet_stats() == {("Stat", "conns"): pytest.approx(14.5)}
    assert feed(engine, clock, thing="dev0", every=10, connections=14) == []
    [start] = feed(engine, clock, thing="dev1", every=10, connections=40)
    assert start.additional_info == {"statisticalThreshold": {"statistic": "p90"}, "thresholdValue": 14.5}
    assert alerts.messages[-1]["threshold"] == 14.5
    described = engine.describe_profile("Stat")["statisticalThresholds"]["conns"]
    assert described["value"] == 14.5 and described["devices"] == 6
    engine.store.close()


def test_no_statistical_threshold_with_too_few_devices(db, clock):
    engine, _ = make_engine(db, clock, fleet_min_devices=5)
    engine.apply_profile(
        profile(
            "Stat",
            behavior(
                "conns",
                "aws:num-established-tcp-connections",
                "less-than-equals",
                statisticalThreshold={"statistic": "p90"},
            ),
        ),
        attach="all",
    )
    for i in range(4):
        feed(engine, clock, thing=f"dev{i}", every=10, connections=10)
    assert engine.recompute_fleet_stats() == {("Stat", "conns"): None}
    assert feed(engine, clock, thing="dev0", every=10, connections=1000) == []
    engine.store.close()


def test_fleet_population_counts_each_device_once_and_drops_silent_ones(db, clock):
    """The population rules of docs/profiles.md: each device once, with its latest value; devices
    silent for the behavior's duration leave it."""
    engine, _ = make_engine(db, clock, fleet_min_devices=2)
    engine.apply_profile(
        profile(
            "Stat",
            behavior(
                "conns",
                "aws:num-established-tcp-connections",
                "greater-than-equals",
                statisticalThreshold={"statistic": "p0"},
                durationSeconds=300,
            ),
        ),
        attach="all",
    )
    feed(engine, clock, thing="dev0", every=10, connections=10)
    feed(engine, clock, thing="dev1", every=10, connections=20)
    assert engine.recompute_fleet_stats() == {("Stat", "conns"): 10}
    feed(engine, clock, thing="dev0", every=10, connections=50)  # dev0's 10 is replaced, not added
    assert engine.recompute_fleet_stats() == {("Stat", "conns"): 20}
    feed(engine, clock, thing="dev2", every=400, connections=30)  # dev0 and dev1 silent for 300 s+
    feed(engine, clock, thing="dev3", every=10, connections=40)
    assert engine.recompute_fleet_stats() == {("Stat", "conns"): 30}
    assert engine.describe_profile("Stat")["statisticalThresholds"]["conns"]["devices"] == 2
    engine.store.close()


def test_quarantine_action_moves_the_thing_under_a_stricter_profile(db, clock):
    actions = {"Fleet/conns": {"type": "add-thing-to-group", "group": "quarantine"}}
    engine, _ = make_engine(db, clock, actions=actions)
    assert engine.store.group_exists("quarantine")  # created at start
    engine.apply_profile(max_connections(limit=50, name="Fleet"), attach="all")
    engine.apply_profile(
        profile("Lockdown", behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]})),
        attach="group:quarantine",
    )
    assert feed(engine, clock, tcp_ports=[22, 8080], connections=1) == []  # Lockdown does not apply yet
    [start] = feed(engine, clock, tcp_ports=[22, 8080], connections=60)
    assert engine.store.groups_of("dev1") == ["quarantine"]
    [entry] = engine.store.list_actions()
    assert (entry["outcome"], entry["dryRun"], entry["violationId"]) == ("done", False, start.violation_id)
    events = feed(engine, clock, tcp_ports=[22, 8080], connections=1)
    assert [(e.profile, e.event_type) for e in events] == [("Fleet", "alarm-cleared"), ("Lockdown", "in-alarm")]
    assert events[1].metric_value == {"ports": [22, 8080]}
    engine.store.close()


def test_dry_run_only_logs_what_it_would_do(db, clock):
    actions = {"*/*": {"type": "add-thing-to-group", "group": "quarantine"}}
    engine, _ = make_engine(db, clock, actions=actions, dry_run=True)
    engine.apply_profile(max_connections(), attach="all")
    feed(engine, clock, connections=9)
    assert engine.store.groups_of("dev1") == []
    [entry] = engine.store.list_actions()
    assert entry["outcome"] == "dry-run" and entry["detail"] == "would add thing dev1 to group quarantine"
    engine.store.close()


def test_release_action_on_alarm_cleared(db, clock):
    actions = {
        "Conns/conns": [
            {"type": "add-thing-to-group", "group": "watch"},
            {"type": "remove-thing-from-group", "group": "watch", "on": "alarm-cleared"},
        ]
    }
    engine, _ = make_engine(db, clock, actions=actions)
    engine.apply_profile(max_connections(), attach="all")
    feed(engine, clock, connections=9)
    assert engine.store.groups_of("dev1") == ["watch"]
    feed(engine, clock, connections=1)
    assert engine.store.groups_of("dev1") == []
    assert [e["outcome"] for e in engine.store.list_actions()] == ["done", "done"]
    engine.store.close()


def test_changing_or_deleting_a_profile_invalidates_its_open_violations(engine, clock):
    engine.apply_profile(
        profile(
            "P",
            behavior("a", "aws:num-established-tcp-connections", "less-than", {"count": 5}),
            behavior("b", "aws:num-listening-tcp-ports", "less-than", {"count": 2}),
        ),
        attach="all",
    )
    events = feed(engine, clock, connections=9, tcp_ports=[1, 2, 3])
    assert sorted(e.behavior["name"] for e in events) == ["a", "b"]
    # b's criteria change, a stays: only b's episode ends
    engine.apply_profile(
        profile(
            "P",
            behavior("a", "aws:num-established-tcp-connections", "less-than", {"count": 5}),
            behavior("b", "aws:num-listening-tcp-ports", "less-than", {"count": 10}),
        )
    )
    [invalidated] = [e for e in engine.violation_events() if e["violationEventType"] == "alarm-invalidated"]
    assert invalidated["behavior"]["name"] == "b"
    assert invalidated["violationEventAdditionalInfo"]["invalidationReason"] == "behavior-changed"
    assert [v["behavior"]["name"] for v in engine.active_violations()] == ["a"]
    engine.delete_profile("P")
    assert engine.active_violations() == []
    assert engine.violation_events()[-1]["violationEventAdditionalInfo"]["invalidationReason"] == "profile-deleted"
    with pytest.raises(NotFound):
        engine.delete_profile("P")


def test_leaving_the_group_a_profile_is_attached_to_invalidates(engine, clock):
    engine.create_group("g")
    engine.add_to_group("g", "dev1")
    engine.apply_profile(max_connections(), attach="group:g")
    feed(engine, clock, connections=9)
    engine.remove_from_group("g", "dev1")
    [event] = [e for e in engine.violation_events() if e["violationEventType"] == "alarm-invalidated"]
    assert event["violationEventAdditionalInfo"]["invalidationReason"] == "profile-detached"


def test_deleting_a_thing_invalidates_its_violations(engine, clock):
    engine.apply_profile(max_connections(), attach="all")
    [start] = feed(engine, clock, connections=9)
    engine.delete_thing("dev1")
    [event] = [e for e in engine.violation_events() if e["violationEventType"] == "alarm-invalidated"]
    assert event["violationId"] == start.violation_id
    assert event["violationEventAdditionalInfo"]["invalidationReason"] == "thing-deleted"
    assert engine.store.list_things() == [] and engine.active_violations() == []
    with pytest.raises(NotFound):
        engine.delete_thing("dev1")


def test_suppressed_alerts_are_recorded_but_not_sent(engine, clock):
    quiet = max_connections()
    quiet["behaviors"][0]["suppressAlerts"] = True
    engine.apply_profile(quiet, attach="all")
    assert types(feed(engine, clock, connections=9)) == ["in-alarm"]
    assert engine.collected.messages == []


def test_events_written_without_targets_are_sent_by_the_engine_that_has_them(db, clock):
    cli = Engine(Store(db), clock)  # like `garrison-detect profiles delete`
    cli.apply_profile(max_connections(), attach="all")
    feed(cli, clock, connections=9)
    cli.delete_profile("Conns")
    cli.store.close()
    serve, alerts = make_engine(db, clock)
    assert serve.dispatch_alerts() == 2
    assert [m["violationEventType"] for m in alerts.messages] == ["in-alarm", "alarm-invalidated"]
    assert alerts.messages[1]["invalidationReason"] == "profile-deleted"
    assert serve.dispatch_alerts() == 0
    serve.store.close()


def test_alerts_reach_real_targets(db, clock, caplog):
    engine = Engine(Store(db), clock, alerts=AlertDispatcher([LogTarget()]))
    engine.apply_profile(max_connections(), attach="all")
    with caplog.at_level("WARNING", logger="garrison.alerts"):
        [start] = feed(engine, clock, connections=9)
    assert start.violation_id in caplog.text and '"violationEventType": "in-alarm"' in caplog.text
    engine.store.close()


def test_ml_behaviors_wait_for_a_model(engine, clock):
    engine.apply_profile(
        profile(
            "ML",
            behavior("conns", "aws:num-established-tcp-connections", mlDetectionConfig={"confidenceLevel": "HIGH"}),
        ),
        attach="all",
    )
    assert feed(engine, clock, connections=10_000) == []
    [summary] = engine.describe_profile("ML")["behaviorModelTrainingSummaries"]
    assert summary == {"behaviorName": "conns", "modelStatus": "PENDING_BUILD"}


def test_ml_behaviors_alarm_on_what_the_device_model_learned(db, clock):
    pytest.importorskip("garrison.detect.judge.ml")
    engine, alerts = make_engine(db, clock, ml={"training_days": 0, "min_datapoints": 30, "retrain_every_s": 0})
    engine.apply_profile(
        profile(
            "ML",
            behavior("conns", "aws:num-established-tcp-connections", mlDetectionConfig={"confidenceLevel": "HIGH"}),
        ),
        attach="all",
    )
    for i in range(60):
        assert feed(engine, clock, connections=8 + i % 5) == []  # 8..12: normal, learned
    [summary] = engine.describe_profile("ML")["behaviorModelTrainingSummaries"]
    assert summary["modelStatus"] == "ACTIVE"
    [start] = feed(engine, clock, connections=400)
    assert start.event_type == "in-alarm" and start.metric_value == {"count": 400}
    assert start.additional_info["confidenceLevel"] == "HIGH"
    assert "400" in start.additional_info["explanation"]
    assert alerts.messages[-1]["confidenceLevel"] == "HIGH"
    [end] = feed(engine, clock, connections=10)
    assert end.event_type == "alarm-cleared" and end.violation_id == start.violation_id
    engine.store.close()
    # the models live in the database: a restarted engine judges with what was learned
    engine, _ = make_engine(db, clock, ml={"training_days": 0, "min_datapoints": 30, "retrain_every_s": 0})
    assert types(feed(engine, clock, connections=400)) == ["in-alarm"]
    engine.store.close()


def test_the_ingestor_drives_the_engine_strict_mode_and_redelivery(engine, clock):
    from garrison.agent import report as wire
    from garrison.detect.ingest.frontdoor import Ingestor
    from engine_support import build

    engine.apply_profile(max_connections(), attach="all")
    ingestor = Ingestor(engine, min_interval_s=300, strict=True)
    payload = wire.encode(build(connections=9))
    reply = ingestor.handle(wire.topic("dev1", "json"), payload, clock.now_ms())
    assert not reply.accepted and reply.error_code == "UnregisteredThing"
    engine.add_thing("dev1")
    assert ingestor.handle(wire.topic("dev1", "json"), payload, clock.now_ms()).accepted
    assert len(engine.active_violations("dev1")) == 1
    assert ingestor.handle(wire.topic("dev1", "json"), payload, clock.now_ms() + 1000).accepted  # redelivery
    throttled = ingestor.handle(wire.topic("dev1", "json"), wire.encode(build(connections=1)), clock.now_ms() + 2000)
    assert throttled.error_code == "Throttled"  # AWS: one report per 300 s
    assert len(engine.violation_events()) == 1 and engine.store.list_things()[0]["reports"] == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 12), st.booleans(), st.booleans()), min_size=1, max_size=25))
def test_restarts_and_redeliveries_change_nothing(tmp_path_factory, steps):
    """The same reports give the same history whether the engine ran straight through or was
    restarted and sent duplicates along the way; episodes are well formed either way."""
    doc = max_connections(limit=5, to_alarm=2, to_clear=2)
    reports = [validated(connections=n) for n, _, _ in steps]

    def run(with_trouble):
        clock = ManualClock()
        db = tmp_path_factory.mktemp("prop") / "engine.db"
        engine = Engine(Store(db), clock, alerts=Collect())
        engine.apply_profile(doc, attach="all")
        for report, (_, restart, duplicate) in zip(reports, steps):
            clock.advance(300)
            engine.accept("dev1", report, clock.now_ms())
            if with_trouble and duplicate:
                engine.accept("dev1", report, clock.now_ms() + 1)
            if with_trouble and restart:
                sent = engine.alerts.messages
                engine.store.close()
                engine = Engine(Store(db), clock, alerts=Collect())
                engine.alerts.messages = sent
        events = engine.violation_events()
        engine.store.close()
        return events, engine.alerts.messages

    straight, straight_alerts = run(False)
    troubled, troubled_alerts = run(True)
    shape = [(e["violationEventType"], e["metricValue"], e["violationEventTime"]) for e in straight]
    assert shape == [(e["violationEventType"], e["metricValue"], e["violationEventTime"]) for e in troubled]
    assert [m["violationEventType"] for m in troubled_alerts] == [e[0] for e in shape]
    # episodes alternate in-alarm / alarm-cleared, each with its own id
    assert [e[0] for e in shape] == ["in-alarm", "alarm-cleared"] * (len(shape) // 2) + ["in-alarm"] * (len(shape) % 2)
    ids = [e["violationId"] for e in troubled]
    starts, ends = ids[::2], ids[1::2]
    assert len(set(starts)) == len(starts)  # a new id per episode
    assert ends == starts[: len(ends)]  # an episode ends with its own id


def test_a_report_runs_no_table_creation_once_the_engine_has_started(tmp_path, clock):
    """The report hooks' own tables (audit posture, latest report) are settled when the engine
    starts, so a report's transaction no longer re-runs their CREATE ... IF NOT EXISTS."""
    engine, _ = make_engine(str(tmp_path / "engine.db"), clock)
    statements = []
    engine.store._conn.set_trace_callback(statements.append)
    try:
        feed(engine, clock, connections=1, custom={"posture:telnet_listening": {"number": 0}})
    finally:
        engine.store._conn.set_trace_callback(None)
        engine.store.close()
    assert any("INSERT INTO audit_posture" in s for s in statements)  # the hook did run
    assert any("INSERT INTO latest_reports" in s for s in statements)
    assert not [s for s in statements if "CREATE" in s.upper()]
