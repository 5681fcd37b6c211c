"""aws:disconnect-duration measured by the engine: the sweep's datapoints for silent things, a
report's datapoint of 0, alarms across restarts, and the device-silent invalidation around it.
A manual clock and a real SQLite file."""
import pytest

from garrison.detect.judge import metrics
from garrison.detect.clock import ManualClock
from garrison.detect.config import Config, ConfigError, from_dict
from garrison.detect.engine import Engine
from garrison.detect.judge.profiles import ProfileError, load_profile
from garrison.detect.state.store import Store

from engine_support import Collect, behavior, max_connections, profile, validated

MINUTE = 60
DAY = 86400


def silence_profile(limit=5, operator="less-than-equals", name="Silence", **criteria):
    """Normal: disconnected for at most `limit` minutes (AWS's example behavior)."""
    return profile(name, behavior("silent", "aws:disconnect-duration", operator, {"count": limit}, **criteria))


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def db(any_db):
    return any_db  # SQLite, then PostgreSQL


def make_engine(db, clock, **config):
    engine = Engine(Store(db), clock, Config(**config), alerts=Collect())
    return engine


@pytest.fixture
def engine(db, clock):
    engine = make_engine(db, clock)
    yield engine
    engine.store.close()


def report(engine, clock, thing="dev1", **fields):
    return engine.accept(thing, validated(tcp_ports=[22], **fields), clock.now_ms())


def sweep_after(engine, clock, seconds):
    clock.advance(seconds)
    return engine.sweep()


def test_silence_beyond_the_threshold_raises_an_alarm_and_a_report_clears_it(engine, clock):
    engine.apply_profile(silence_profile(limit=5), attach="all")
    assert report(engine, clock) == []                                 # a report is a datapoint of 0
    assert sweep_after(engine, clock, 5 * MINUTE) == []                # 5 minutes: still normal
    assert sweep_after(engine, clock, 59) == []                        # 5 min 59 s: 5 whole minutes
    [start] = sweep_after(engine, clock, 1)                            # 6 minutes
    assert (start.event_type, start.metric_value, start.time_ms) == ("in-alarm", {"count": 6}, clock.now_ms())
    assert start.behavior["metric"] == "aws:disconnect-duration"
    assert sweep_after(engine, clock, 4 * MINUTE) == []                # still silent: same episode
    [active] = engine.active_violations()
    assert active["violationId"] == start.violation_id and active["lastViolationValue"] == {"count": 10}
    clock.advance(30)
    [end] = report(engine, clock)                                      # back: disconnected for 0
    assert (end.event_type, end.violation_id, end.metric_value) == ("alarm-cleared", start.violation_id, {"count": 0})
    assert engine.active_violations() == []
    assert sweep_after(engine, clock, MINUTE) == []
    assert [m["violationEventType"] for m in engine.alerts.messages] == ["in-alarm", "alarm-cleared"]
    assert engine.alerts.messages[0]["metricValue"] == {"count": 6}


def test_a_restart_keeps_the_episode_and_raises_nothing_twice(db, clock):
    first = make_engine(db, clock)
    first.apply_profile(silence_profile(limit=5), attach="all")
    report(first, clock)
    [start] = sweep_after(first, clock, 10 * MINUTE)
    first.store.close()

    second = make_engine(db, clock)                                     # a new process on the same file
    assert sweep_after(second, clock, 20 * MINUTE) == []               # no second in-alarm
    [active] = second.active_violations()
    assert active["violationId"] == start.violation_id and active["lastViolationValue"] == {"count": 30}
    [end] = report(second, clock)
    assert end.event_type == "alarm-cleared" and end.violation_id == start.violation_id
    second.store.close()

    third = make_engine(db, clock)
    assert sweep_after(third, clock, MINUTE) == []
    events = [(e["violationId"], e["violationEventType"]) for e in third.violation_events()]
    assert events == [(start.violation_id, "in-alarm"), (start.violation_id, "alarm-cleared")]
    third.store.close()


def test_consecutive_datapoints_count_sweeps_and_reports(engine, clock):
    engine.apply_profile(silence_profile(limit=2, consecutiveDatapointsToAlarm=3,
                                         consecutiveDatapointsToClear=2), attach="all")
    report(engine, clock)
    assert sweep_after(engine, clock, 3 * MINUTE) == []                # violating 1
    assert sweep_after(engine, clock, MINUTE) == []                    # violating 2
    [start] = sweep_after(engine, clock, MINUTE)                       # violating 3: in-alarm
    assert start.event_type == "in-alarm" and start.metric_value == {"count": 5}
    assert report(engine, clock) == []                                 # one conforming datapoint
    [end] = sweep_after(engine, clock, MINUTE)                         # the sweep gives the second
    assert end.event_type == "alarm-cleared" and end.metric_value == {"count": 1}


def test_a_report_breaks_a_streak_before_it_alarms(engine, clock):
    engine.apply_profile(silence_profile(limit=2, consecutiveDatapointsToAlarm=2), attach="all")
    report(engine, clock)
    assert sweep_after(engine, clock, 3 * MINUTE) == []                # violating 1
    report(engine, clock)                                              # streak broken
    assert sweep_after(engine, clock, 3 * MINUTE) == []                # violating 1 again
    assert engine.active_violations() == []
    [start] = sweep_after(engine, clock, MINUTE)
    assert start.event_type == "in-alarm"


def test_only_things_under_the_profile_that_have_reported_are_measured(engine, clock):
    engine.create_group("watched")
    engine.add_to_group("watched", "cam1")
    engine.add_to_group("watched", "never-reported")                  # member, but never connected
    engine.add_thing("pre-registered")
    engine.apply_profile(silence_profile(limit=1), attach="group:watched")
    report(engine, clock, thing="cam1")
    report(engine, clock, thing="other")                               # not under the profile
    events = sweep_after(engine, clock, 10 * MINUTE)
    assert [(e.thing, e.event_type) for e in events] == [("cam1", "in-alarm")]


def test_a_reporting_fleet_costs_the_sweep_no_writes(engine, clock):
    engine.apply_profile(silence_profile(limit=5), attach="all")
    for i in range(3):
        report(engine, clock, thing=f"dev{i}")
    before = engine.store.states_of_behavior("Silence", "silent")
    assert sweep_after(engine, clock, MINUTE) == []
    assert engine.store.states_of_behavior("Silence", "silent") == before


def test_a_spooled_backlog_counts_from_its_arrival(engine, clock):
    """Reports the agent spooled while the broker was away are dated by their ids, in the past;
    the device that sends them is connected now, so the silence starts at their arrival."""
    engine.apply_profile(silence_profile(limit=5), attach="all")
    report(engine, clock)
    clock.advance(2 * 3600)                                             # the broker was away for 2 h
    old = clock.now_ms() - 15 * MINUTE * 1000
    engine.accept("dev1", validated(tcp_ports=[22]), old)              # the last spooled report
    assert engine.last_report("dev1")[1] == old
    assert sweep_after(engine, clock, MINUTE) == []                    # 1 minute since it arrived


def test_two_days_of_silence_invalidate_other_violations_but_not_the_disconnect_one(engine, clock):
    engine.apply_profile(profile("Fleet",
                                 max_connections(limit=5)["behaviors"][0],
                                 silence_profile(limit=30)["behaviors"][0]), attach="all")
    [conns] = engine.accept("dev1", validated(connections=9), clock.now_ms())
    [silent] = sweep_after(engine, clock, 31 * MINUTE)
    assert silent.event_type == "in-alarm" and silent.behavior["name"] == "silent"
    clock.advance(2 * DAY)
    events = engine.sweep()
    assert [(e.event_type, e.behavior["name"]) for e in events] == [("alarm-invalidated", "conns")]
    assert events[0].violation_id == conns.violation_id
    assert events[0].additional_info["invalidationReason"] == "device-silent"
    [active] = engine.active_violations()
    assert active["violationId"] == silent.violation_id
    assert active["lastViolationValue"] == {"count": (2 * DAY) // MINUTE + 31}
    assert sweep_after(engine, clock, DAY) == []                       # and it stays, whatever the silence
    [end] = engine.accept("dev1", validated(connections=1), clock.now_ms())
    assert (end.event_type, end.violation_id) == ("alarm-cleared", silent.violation_id)


def test_a_silent_thing_raises_at_the_same_sweep_that_invalidates_its_other_alarms(engine, clock):
    engine.apply_profile(max_connections(limit=5), attach="all")
    engine.accept("dev1", validated(connections=9), clock.now_ms())
    clock.advance(3 * DAY)
    engine.apply_profile(silence_profile(limit=30), attach="all")     # applied while dev1 is silent
    events = engine.sweep()
    assert sorted((e.event_type, e.profile) for e in events) == [("alarm-invalidated", "Conns"),
                                                                  ("in-alarm", "Silence")]
    assert [v["securityProfileName"] for v in engine.active_violations()] == ["Silence"]


def test_other_invalidations_still_end_a_disconnect_episode(engine, clock):
    engine.apply_profile(silence_profile(limit=5), attach="all")
    report(engine, clock)
    [start] = sweep_after(engine, clock, 10 * MINUTE)
    engine.apply_profile(silence_profile(limit=60), attach="all")     # the behavior changed
    [ended] = [e for e in engine.violation_events() if e["violationEventType"] == "alarm-invalidated"]
    assert ended["violationId"] == start.violation_id
    assert ended["violationEventAdditionalInfo"]["invalidationReason"] == "behavior-changed"
    assert sweep_after(engine, clock, MINUTE) == []                    # 11 minutes: normal under 60


def test_the_unit_is_configurable_for_quick_runs(db, clock):
    engine = make_engine(db, clock, disconnect_duration_unit_s=1)
    engine.apply_profile(silence_profile(limit=10), attach="all")
    report(engine, clock)
    assert sweep_after(engine, clock, 10) == []                        # 10 seconds: at most 10
    [start] = sweep_after(engine, clock, 1)
    assert start.metric_value == {"count": 11}
    assert from_dict({"disconnect_duration_unit": "1s", "sweep_interval": "1s"}).disconnect_duration_unit_s == 1
    assert Config().disconnect_duration_unit_s == 60                 # minutes, as AWS
    with pytest.raises(ConfigError, match="disconnect_duration_unit"):
        from_dict({"disconnect_duration_unit": 0})


def test_profiles_take_it_as_aws_does():
    spec = metrics.spec_for("aws:disconnect-duration")
    assert spec.value_type == "count" and spec.operators == ("less-than", "less-than-equals")
    assert metrics.extract({"header": {"report_id": 1, "version": "1.0"}}, "aws:disconnect-duration") == 0
    load_profile(silence_profile(limit=5, operator="less-than"))
    with pytest.raises(ProfileError, match="comparisonOperator"):
        load_profile(silence_profile(limit=5, operator="greater-than"))
    with pytest.raises(ProfileError, match="statisticalThreshold"):
        load_profile(profile("S", behavior("s", "aws:disconnect-duration", "less-than",
                                           statisticalThreshold={"statistic": "p90"})))
    with pytest.raises(ProfileError, match="mlDetectionConfig"):
        load_profile(profile("S", behavior("s", "aws:disconnect-duration",
                                           mlDetectionConfig={"confidenceLevel": "HIGH"})))
