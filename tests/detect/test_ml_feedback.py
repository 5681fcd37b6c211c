"""ML Detect's second version, model side: one odd datapoint is not an alarm, a rhythm shifted by
an hour is normal, operator feedback teaches (benign) or guards (attack), fleet events are
recognised, and version-1 states still load."""
import math
import random
import struct

from garrison.detect.judge.ml import FleetEvents, MLConfig, Model, STATE_SIZE

from test_ml import MONDAY_MS, METRIC, PER_DAY, STEP_MS, count_anomalies, traffic, trained


def night_burst(model, day, factor, confidence="MEDIUM", points=6, learn=True):
    """`factor` x the normal for `points` datapoints at 02:00 of `day` (days after MONDAY_MS)."""
    start = MONDAY_MS + day * 86_400_000 + 2 * 3_600_000
    rng = random.Random(day)
    burst = [(ts, round(value * factor)) for ts, value in traffic(rng, start, points / PER_DAY)]
    return count_anomalies(model, burst, confidence, learn=learn), burst


def test_one_odd_datapoint_is_not_an_alarm_two_in_a_row_are():
    model = trained(random.Random(21), days=14)
    v1 = Model.from_state(model.to_state(), MLConfig.version1())
    ts = MONDAY_MS + 14 * 86_400_000 + 12 * 3_600_000
    expected = model.judge(1, ts, "MEDIUM").expected
    single = model.judge(expected * 4, ts, "MEDIUM", metric=METRIC)
    assert single.outside and single.direction == 1 and not single.anomalous
    assert "not yet confirmed by a second datapoint" in single.explanation
    assert v1.judge(expected * 4, ts, "MEDIUM").anomalous          # the first release alarmed at once
    model.update(expected * 4, ts)
    second = model.judge(expected * 4, ts + STEP_MS, "MEDIUM", metric=METRIC)
    assert second.anomalous and second.kind == "spike" and "above the learned normal band" in second.explanation
    # far outside (x30): at once
    assert model.judge(expected * 30, ts + 2 * STEP_MS, "MEDIUM").anomalous
    # a previous datapoint long ago (missing reports) confirms nothing
    assert not model.judge(expected * 4, ts + 3600_000, "MEDIUM").anomalous


def test_a_rhythm_shifted_by_an_hour_is_normal():
    rng = random.Random(22)
    model = trained(rng, days=14, noise=0.1)
    v1 = Model.from_state(model.to_state(), MLConfig.version1())
    shifted = traffic(rng, MONDAY_MS + 14 * 86_400_000, 2, noise=0.1, phase_h=1.0)   # daylight saving
    assert count_anomalies(model, shifted, "MEDIUM") == []
    assert len(count_anomalies(v1, shifted, "MEDIUM")) > 0          # the first release alarmed


def test_benign_positive_widens_the_band_around_that_hour_only():
    model = trained(random.Random(23), days=14, noise=0.1)
    flagged, burst = night_burst(model, 14, 4.0)
    assert flagged                                                  # the nightly job alarms
    assert model.teach(flagged[0][1].value, flagged[0][0]) == "band"
    up, _, hour = model.tolerance
    assert up >= math.log(4.0) - 0.5 and hour in (1, 2)
    assert night_burst(model, 15, 4.0)[0] == []                     # the same job: normal now
    # ... at that hour only: the same excursion at noon still alarms, and a far larger one at night
    noon = MONDAY_MS + 16 * 86_400_000 + 12 * 3_600_000
    expected = model.judge(1, noon, "MEDIUM").expected
    model.update(expected * 4, noon)
    assert model.judge(expected * 4, noon + STEP_MS, "MEDIUM").anomalous
    assert night_burst(model, 17, 40.0, learn=False)[0]


def test_true_positive_guards_a_recurring_attack_from_being_learned():
    taught, untaught = (trained(random.Random(24), days=14, noise=0.1) for _ in range(2))
    flagged, _ = night_burst(taught, 14, 4.0)
    night_burst(untaught, 14, 4.0)
    assert taught.teach(flagged[0][1].value, flagged[0][0], benign=False) == "guard"
    assert taught.tolerance[0] == 0
    alarmed = {"taught": 0, "untaught": 0}
    for day in range(15, 29):                    # two weeks of the same nightly upload
        alarmed["taught"] += bool(night_burst(taught, day, 4.0)[0])
        alarmed["untaught"] += bool(night_burst(untaught, day, 4.0)[0])
        for model in (taught, untaught):         # and a normal rest of the night
            rng = random.Random(day)
            for ts, value in traffic(rng, MONDAY_MS + day * 86_400_000 + 3 * 3_600_000, 1 / 24):
                model.update(value, ts)
    assert alarmed["taught"] == 14               # verified an attack: it alarms every night
    assert alarmed["untaught"] < 14              # unverified, online learning starts to absorb it


def test_a_benign_lasting_change_becomes_the_new_level():
    model = trained(random.Random(25), days=14, noise=0.1)
    ts = MONDAY_MS + 14 * 86_400_000 + 12 * 3_600_000
    expected = model.judge(1, ts, "MEDIUM").expected
    assert model.teach(expected * 3, ts, lasting=True) == "level"   # new firmware: x3 for good
    assert abs(math.log(model.judge(1, ts, "MEDIUM").expected / (expected * 3))) < 0.01
    assert model.tolerance == (0.0, 0.0, None)


def test_version_1_states_load_and_keep_their_model():
    model = trained(random.Random(26), days=3)
    blob = bytearray(model.to_state()[:318])
    blob[0], blob[2], blob[3] = 1, 0, 0
    old = Model.from_state(bytes(blob))
    assert len(old.to_state()) == STATE_SIZE == 322 and old.tolerance == (0.0, 0.0, None)
    ts = MONDAY_MS + 3 * 86_400_000
    assert old.judge(50_000, ts, "LOW").expected == model.judge(50_000, ts, "LOW").expected
    assert struct.unpack_from("<f", old.to_state(), STATE_SIZE - 4)[0] == 0.0


def test_fleet_events_need_many_devices_the_same_way_at_once():
    events = FleetEvents(MLConfig())
    t = MONDAY_MS
    things = [f"d{k}" for k in range(20)]
    for thing in things:                                    # a quiet interval
        assert events.note(thing, t, 0) == []
    t += STEP_MS
    assert events.note("d0", t, 1) == [] and not events.active(1)       # a lone device: no event
    changes = []
    for thing in things[1:6]:                                # five of twenty up at once
        changes += events.note(thing, t, 1)
    assert changes == ["open"] and events.active(1) and not events.active(-1)
    assert events.describe()["devices"] == 6 and events.describe()["direction"] == "above"
    closed = []
    for step in range(2, 16):                                # then normal: it clears after an hour
        for thing in things:
            closed += [(step, c) for c in events.note(thing, t + step * STEP_MS, 0)]
    assert closed == [(14, "close")] or closed == [(15, "close")] or closed[0][1] == "close"
    assert not events.active(1)
    assert FleetEvents(MLConfig(fleet_event_fraction=0)).note("d0", t, 1) == []
