"""ML Detect models: seasonal normal, step changes, explanations, fleet prior, state, status."""
import math
import random

import pytest

from garrison.detect.judge.ml import (ACTIVE, EXPIRED, PENDING_BUILD, STATE_SIZE, BehaviorModels, FleetPrior,
                       FleetPriorBuilder, MLConfig, MLConfigError, Model, supports)

STEP_MS = 300_000
PER_DAY = 288
MONDAY_MS = 1767571200000        # 2026-01-05 00:00 UTC, a Monday
METRIC = "aws:all-bytes-out"


def traffic(rng, start_ms, days, level=40_000.0, amp=1.1, weekend=-0.6, noise=0.15, phase_h=0.0):
    """(ts_ms, bytes) every 300 s: a daily rhythm of x9 peak-to-trough, a weekend dip, lognormal noise."""
    out = []
    for k in range(int(days * PER_DAY)):
        ts = start_ms + k * STEP_MS
        hour = (ts // 1000 % 86400) / 3600
        is_weekend = (ts // 86_400_000 + 3) % 7 >= 5
        y = (math.log(level) + amp * math.sin(2 * math.pi * (hour - 8 - phase_h) / 24)
             + (weekend if is_weekend else 0.0) + rng.gauss(0, noise))
        out.append((ts, round(math.exp(y))))
    return out


def trained(rng, days=14, config=None, **kw):
    model = Model.new(config or MLConfig())
    for ts, value in traffic(rng, MONDAY_MS, days, **kw):
        model.update(value, ts)
    return model


def count_anomalies(model, points, confidence, learn=True, prior=None):
    flagged = []
    for ts, value in points:
        judgement = model.judge(value, ts, confidence, prior=prior, metric=METRIC)
        if judgement.anomalous:
            flagged.append((ts, judgement))
        if learn:
            model.update(value, ts, prior=prior)
    return flagged


def test_daily_and_weekly_rhythm_raise_no_alarm_in_a_normal_third_week():
    rng = random.Random(1)
    model = trained(rng, days=14)
    assert model.status(MONDAY_MS + 14 * 86_400_000) == ACTIVE
    week3 = traffic(rng, MONDAY_MS + 14 * 86_400_000, 7)
    for level in ("MEDIUM", "HIGH"):
        assert count_anomalies(Model.from_state(model.to_state()), week3, level) == []
    # LOW is the most sensitive; a normal week stays (almost) silent there too.
    assert len(count_anomalies(model, week3, "LOW")) <= 2
    # The rhythm is real: the expected value swings across the day (x9 in traffic()), so a band
    # blind to the hour would have alarmed above.
    expected = [model.judge(v, ts, "HIGH").expected for ts, v in traffic(rng, MONDAY_MS + 21 * 86_400_000, 1)]
    assert max(expected) / min(expected) > 5


def test_step_change_is_flagged_with_its_band():
    rng = random.Random(2)
    model = trained(rng, days=14)
    after = traffic(rng, MONDAY_MS + 14 * 86_400_000, 1)
    stepped = [(ts, value * 5) for ts, value in after[:24]]
    flagged = count_anomalies(model, stepped, "HIGH")
    # The first datapoint is outside the band; the second confirms it (one odd report is not an
    # alarm), so the step alarms from its second datapoint.
    assert flagged and flagged[0][0] == stepped[1][0]
    judgement = flagged[0][1]
    assert judgement.kind == "spike" and judgement.score > 6.5
    assert judgement.value > judgement.high > judgement.expected > judgement.low > 0


def test_sustained_modest_increase_is_flagged_as_a_shift():
    rng = random.Random(3)
    model = trained(rng, days=14, noise=0.1)
    after = traffic(rng, MONDAY_MS + 14 * 86_400_000, 1, noise=0.1)
    exfil = [(ts, value * 1.5) for ts, value in after[:48]]      # +50 %: 4 sigma, inside LOW band
    flagged = count_anomalies(model, exfil, "MEDIUM")
    assert flagged, "a sustained +50% was not noticed"
    first_ts, judgement = flagged[0]
    assert judgement.kind == "shift" and judgement.low <= judgement.value <= judgement.high
    assert (first_ts - exfil[0][0]) // STEP_MS < 24              # within two hours
    assert "sustained shift" in judgement.explanation



def test_weak_exfiltration_on_a_steep_rhythm_is_found_at_medium():
    # Issue 17, harder fleet seed 11: the exfiltrations MEDIUM missed were x1.45-1.56 on devices
    # with a steep daily rhythm. The shift average follows the error beyond the +-1 h phase
    # envelope, which on a steep rhythm forgives most of such an increase, and online learning
    # absorbs the rest during the day: the average peaked at 0.85-0.92 sigma, under MEDIUM's
    # former limit 0.95. The limit is 0.85 now; a clean day of the same device stays silent.
    rng = random.Random(0)
    points = traffic(rng, MONDAY_MS, 15, amp=1.2, noise=0.3)
    model = Model.new(MLConfig())
    for ts, value in points[:14 * PER_DAY]:
        model.update(value, ts)
    clean = Model.from_state(model.to_state())
    exfil = [(ts, value * 1.4) for ts, value in points[14 * PER_DAY:]]     # x1.4 for 24 h
    flagged = count_anomalies(model, exfil, "MEDIUM")
    assert flagged and all(j.kind == "shift" for _, j in flagged)
    assert count_anomalies(clean, points[14 * PER_DAY:], "MEDIUM") == []

def test_explanation_names_metric_value_band_and_confidence():
    rng = random.Random(4)
    model = trained(rng, days=14)
    ts = MONDAY_MS + 14 * 86_400_000 + 12 * 3_600_000
    judgement = model.judge(2_000_000, ts, "HIGH", metric=METRIC)
    assert judgement.anomalous
    text = judgement.explanation
    low, high = judgement.low, judgement.high
    assert METRIC in text and "2000000" in text and "HIGH" in text
    assert f"[{round(low)}, {round(high)}]" in text and "Mon 12:00 UTC" in text
    data = judgement.as_dict()
    assert data["explanation"] == text and data["metric"] == METRIC and data["confidence"] == "HIGH"
    assert data["low"] == low and data["high"] == high and data["status"] == ACTIVE


def fleet(rng, devices=12, days=8):
    models = []
    for d in range(devices):
        model = Model.new()
        for ts, value in traffic(rng, MONDAY_MS, days, level=rng.uniform(20_000, 80_000),
                                 phase_h=rng.uniform(-1, 1)):
            model.update(value, ts)
        models.append(model)
    return models


def test_new_device_is_judged_with_the_fleet_prior_from_its_first_report():
    rng = random.Random(5)
    prior = FleetPrior.from_models(fleet(rng))
    assert prior is not None and prior.models == 12
    start = MONDAY_MS + 8 * 86_400_000
    points = traffic(rng, start, 2, level=50_000)
    newcomer = Model.new()
    first = newcomer.judge(points[0][1], points[0][0], "HIGH", prior=prior, metric=METRIC)
    assert first.basis == "fleet" and first.status == PENDING_BUILD and not first.anomalous and first.judged
    assert first.low is None and points[0][1] < first.high and "fleet prior" in first.explanation
    flagged = count_anomalies(newcomer, points, "MEDIUM", prior=prior)
    assert newcomer.seeded and newcomer.status(points[-1][0]) == PENDING_BUILD
    assert flagged == []
    later = newcomer.judge(points[-1][1] * 30, points[-1][0] + STEP_MS, "HIGH", prior=prior, metric=METRIC)
    assert later.anomalous and later.basis == "device+fleet" and later.status == PENDING_BUILD
    assert "seeded from the fleet prior" in later.explanation
    # Without a prior a building model does not judge at all.
    alone = Model.new()
    for ts, value in points[:10]:
        alone.update(value, ts)
    blind = alone.judge(points[10][1] * 100, points[10][0], "LOW", metric=METRIC)
    assert not blind.anomalous and not blind.judged and blind.basis == "none" and blind.low is None
    assert "PENDING_BUILD" in blind.explanation and "10 of 1000 datapoints" in blind.explanation


def test_a_zeroed_first_report_does_not_become_the_new_devices_normal():
    rng = random.Random(14)
    prior = FleetPrior.from_models(fleet(rng))
    points = traffic(rng, MONDAY_MS + 8 * 86_400_000, 1, level=50_000)
    twin = Model.new()                            # the same device without the artefact
    count_anomalies(twin, points, "LOW", prior=prior)
    points[0] = (points[0][0], 0)                 # the agent's first report: deltas are zero
    newcomer = Model.new()
    flagged = count_anomalies(newcomer, points, "LOW", prior=prior)
    assert flagged == []
    ts = points[-1][0] + STEP_MS
    expected = newcomer.judge(1, ts, "LOW", prior=prior).expected
    assert abs(math.log(expected / twin.judge(1, ts, "LOW", prior=prior).expected)) < 0.05
    # The same zero in the middle of a known device's day is a drop, and says so.
    drop = newcomer.judge(0, ts, "LOW", prior=prior, metric=METRIC)
    assert drop.direction == -1 and drop.low > 0 and "below the learned normal band" in drop.explanation
    newcomer.update(0, ts, prior=prior)       # a second zero in a row confirms it
    assert newcomer.judge(0, ts + STEP_MS, "LOW", prior=prior, metric=METRIC).anomalous


def test_fleet_prior_learns_the_shared_rhythm():
    rng = random.Random(6)
    prior = FleetPrior.from_models(fleet(rng))
    peak = max(range(24), key=lambda h: prior.hour[h])
    trough = min(range(24), key=lambda h: prior.hour[h])
    assert peak in (13, 14, 15) and trough in (1, 2, 3)             # sin peaks at 14:00 in traffic()
    assert prior.weekday[5] < -0.3 and prior.weekday[6] < -0.3      # weekend dip
    assert 0.3 < prior.spread < 1.0                                 # levels 20k..80k differ
    assert FleetPrior.from_models([Model.new()]) is None            # nothing trained yet


def test_state_round_trips_exactly():
    rng = random.Random(7)
    model = trained(rng, days=3)
    blob = model.to_state()
    assert isinstance(blob, bytes) and len(blob) == STATE_SIZE
    copy = Model.from_state(blob)
    assert copy == model and copy.to_state() == blob
    ts = MONDAY_MS + 3 * 86_400_000
    assert copy.judge(12345, ts, "LOW", metric=METRIC) == model.judge(12345, ts, "LOW", metric=METRIC)
    model.update(12345, ts)
    copy.update(12345, ts)
    assert copy.to_state() == model.to_state()
    before = model.to_state()
    model.judge(1e9, ts + STEP_MS, "HIGH")                          # judging never learns
    assert model.to_state() == before
    prior = FleetPrior.from_models(fleet(rng, devices=3, days=2))
    assert FleetPrior.from_state(prior.to_state()) == prior
    with pytest.raises(ValueError, match=f"expected {STATE_SIZE} bytes"):
        Model.from_state(blob[:-1])


def test_status_goes_pending_build_active_expired_and_restarts():
    config = MLConfig(training_days=2, min_datapoints=400, retrain_every_s=86400, expire_after_s=3 * 86400)
    rng = random.Random(8)
    model = Model.new(config)
    assert model.status(MONDAY_MS) == PENDING_BUILD
    points = traffic(rng, MONDAY_MS, 4)
    for k, (ts, value) in enumerate(points):
        model.update(value, ts)
        if k == 500:      # enough datapoints, not yet two days
            assert model.status(ts) == PENDING_BUILD
        if ts - MONDAY_MS == 2 * 86_400_000 - STEP_MS:   # two days, but the next build is later
            assert model.status(ts) == PENDING_BUILD
    last = points[-1][0]
    assert model.status(last) == ACTIVE
    assert model.training_summary(last)["modelStatus"] == ACTIVE
    assert model.training_summary(last)["datapointsCollectionPercentage"] == 100.0
    assert model.status(last + 3 * 86_400_000) == ACTIVE
    assert model.status(last + 3 * 86_400_000 + 1000) == EXPIRED
    expired = model.judge(points[0][1], last + 4 * 86_400_000, "LOW")
    assert expired.status == EXPIRED and not expired.anomalous
    assert "no datapoint for 4.0 days" in expired.explanation
    model.update(points[0][1], last + 4 * 86_400_000)
    assert model.status(last + 4 * 86_400_000) == PENDING_BUILD and model.datapoints == 1


def test_retrain_every_zero_promotes_as_soon_as_trained():
    config = MLConfig(training_days=1, min_datapoints=100, retrain_every_s=0)
    model = Model.new(config)
    for ts, value in traffic(random.Random(9), MONDAY_MS, 1.01):
        model.update(value, ts)
    assert model.status(MONDAY_MS + 86_400_000) == ACTIVE


def test_high_confidence_is_stricter_than_low():
    rng = random.Random(10)
    model = trained(rng, days=14, noise=0.2)
    ts0 = MONDAY_MS + 14 * 86_400_000
    flagged = {}
    for level in ("LOW", "MEDIUM", "HIGH"):
        flagged[level] = set()
        for k in range(200):          # deviations from x1 to x10, spread over a day
            ts = ts0 + k * STEP_MS
            value = model.judge(1, ts, level).expected * math.exp(k / 200 * math.log(10))
            judgement = model.judge(value, ts, level)
            if judgement.score > judgement.limit:             # outside the band (to be confirmed)
                flagged[level].add(k)
    assert flagged["HIGH"] < flagged["MEDIUM"] < flagged["LOW"]     # strict subsets
    low_band, high_band = model.judge(1, ts0, "LOW"), model.judge(1, ts0, "HIGH")
    assert high_band.low < low_band.low < low_band.high < high_band.high


def test_new_listening_port_on_a_constant_count_is_flagged_at_high():
    model = Model.new(MLConfig(training_days=1, min_datapoints=100))
    for k in range(4 * PER_DAY):
        model.update(3, MONDAY_MS + k * STEP_MS)
    ts = MONDAY_MS + 4 * PER_DAY * STEP_MS
    assert not model.judge(3, ts, "HIGH", metric="aws:num-listening-tcp-ports").anomalous
    judgement = model.judge(4, ts, "HIGH", metric="aws:num-listening-tcp-ports")
    assert judgement.direction == 1 and not judgement.anomalous and judgement.high < 4
    assert "not yet confirmed" in judgement.explanation
    model.update(4, ts)                  # the port is still open at the next report: an alarm
    assert model.judge(4, ts + STEP_MS, "HIGH", metric="aws:num-listening-tcp-ports").anomalous


def test_negative_custom_numbers_are_modelled():
    rng = random.Random(11)
    model = Model.new(MLConfig(training_days=2, min_datapoints=200))
    for k in range(3 * PER_DAY):
        model.update(rng.gauss(-5, 0.3), MONDAY_MS + k * STEP_MS)
    ts = MONDAY_MS + 3 * PER_DAY * STEP_MS
    normal = model.judge(-5.1, ts, "HIGH", metric="temperature")
    assert not normal.anomalous and normal.low < -5.1 < normal.high < 0
    assert model.judge(25, ts, "HIGH", metric="temperature").anomalous


def test_bad_input_and_config_are_refused_with_a_clear_message():
    with pytest.raises(MLConfigError, match="min_datapoints=0"):
        MLConfig(min_datapoints=0)
    with pytest.raises(MLConfigError, match="unknown ML config key.*trainig_days"):
        MLConfig.from_dict({"trainig_days": 3})
    assert MLConfig.from_dict({"training_days": 3}).training_days == 3
    with pytest.raises(MLConfigError, match="bands"):
        MLConfig(bands={"LOW": (3, 1)})
    model = Model.new()
    with pytest.raises(ValueError, match="finite"):
        model.update(float("nan"), MONDAY_MS)
    with pytest.raises(ValueError, match="confidence"):
        model.judge(1, MONDAY_MS, "VERY_HIGH")


def test_supported_metrics():
    for metric in ("aws:all-bytes-in", "aws:all-bytes-out", "aws:all-packets-in", "aws:all-packets-out",
                   "aws:num-listening-tcp-ports", "aws:num-listening-udp-ports",
                   "aws:num-established-tcp-connections"):
        assert supports(metric)
    assert supports("cpu-temp", "number")
    assert not supports("aws:listening-tcp-ports", "ports")
    assert not supports("aws:destination-ip-addresses", "cidrs")
    assert not supports("firmware", "strings")


def test_prior_builder_samples_with_bounded_memory():
    rng = random.Random(12)
    models = fleet(rng, devices=6, days=2)
    builder = FleetPriorBuilder(max_models=3, seed=1)
    assert all(builder.add(m) for m in models)
    assert not builder.add(Model.new())
    prior = builder.build()
    assert prior.models == 6 and len(builder._sample) == 3


def test_behavior_models_judge_learn_store_and_rebuild_the_prior(tmp_path):
    import dbm
    rng = random.Random(13)
    with dbm.open(str(tmp_path / "ml-states"), "c") as states:    # a real on-disk mapping
        models = BehaviorModels(MLConfig(retrain_every_s=86400), states=states)
        for thing in ("a", "b", "c"):
            for ts, value in traffic(rng, MONDAY_MS, 2, level=rng.uniform(20_000, 60_000)):
                models.observe(thing, value, ts, "HIGH", METRIC)
            assert len(states[thing]) == STATE_SIZE
        assert models.prior is None
        assert models.maybe_rebuild_prior(MONDAY_MS + 2 * 86_400_000)
        assert not models.maybe_rebuild_prior(MONDAY_MS + 2 * 86_400_000 + 1000)
        assert models.prior.models == 3
        first = models.observe("newcomer", 40_000, MONDAY_MS + 2 * 86_400_000, "HIGH", METRIC)
        assert first.basis == "fleet" and models.model("newcomer").seeded
        summary = models.training_summaries(MONDAY_MS + 2 * 86_400_000)
        assert summary["a"]["datapoints"] == 2 * PER_DAY and summary["newcomer"]["datapoints"] == 1
        assert summary["a"]["modelStatus"] == PENDING_BUILD


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e12, 1e15, allow_nan=False), st.integers(0, 3 * 86_400_000)),
                min_size=1, max_size=40),
       st.sampled_from(("LOW", "MEDIUM", "HIGH")))
def test_any_finite_datapoints_keep_the_model_sane(points, confidence):
    model = Model.new(MLConfig(training_days=0, min_datapoints=1, retrain_every_s=0))
    for value, offset in points:
        ts = MONDAY_MS + offset
        judgement = model.judge(value, ts, confidence)
        if judgement.low is not None:
            assert judgement.low <= judgement.expected <= judgement.high
            outside = not judgement.low <= value <= judgement.high
            assert (outside or judgement.kind == "shift") <= bool(judgement.direction)
            assert judgement.anomalous <= (outside or judgement.kind == "shift")
            assert ("not yet confirmed" in judgement.explanation) == (outside and not judgement.anomalous)
        assert judgement.explanation
        model.update(value, ts)
        assert Model.from_state(model.to_state()).to_state() == model.to_state()
    assert model.status(MONDAY_MS + 3 * 86_400_000) == ACTIVE
