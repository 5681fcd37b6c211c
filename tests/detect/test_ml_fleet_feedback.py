"""ML Detect in the real engine: a fleet-wide deviation becomes one fleet notice while a lone
device doing the same still alarms; an operator's verification through the CLI (a subprocess on
the same SQLite file) teaches the device's model: BENIGN_POSITIVE makes the same burst normal,
TRUE_POSITIVE does not."""
import math
import random

import pytest

pytest.importorskip("garrison.detect.judge.ml")

from garrison.detect.clock import ManualClock  # noqa: E402
from garrison.detect.config import Config  # noqa: E402
from garrison.detect.engine import Engine  # noqa: E402
from garrison.detect.judge.mlbridge import FLEET_THING  # noqa: E402
from garrison.detect.state.store import Store  # noqa: E402

from engine_support import Collect, behavior, profile  # noqa: E402
from test_cli import run  # noqa: E402
from test_ml_engine import report, snapshot  # noqa: E402

STEP_S = 300
ML = {"training_days": 1, "min_datapoints": 200, "retrain_every_s": 3600}
PROFILE = profile("Fleet", behavior("bytes-out", "aws:all-bytes-out", mlDetectionConfig={"confidenceLevel": "MEDIUM"}))
DEVICES = {f"dev{k}": 20_000.0 * (k + 1) for k in range(6)}


def bytes_out(rng, ts_s, level):
    """A mild daily rhythm with lognormal noise: a model trained on 1.5 days of it is settled."""
    hour = ts_s % 86400 / 3600
    return math.exp(math.log(level) + 0.3 * math.sin(2 * math.pi * (hour - 8) / 24) + rng.gauss(0, 0.1))


def engine_on(db, clock):
    return Engine(Store(db), clock, Config(ml=dict(ML)), alerts=Collect())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six devices (levels x1..x6) with 1.5 days of their normal rhythm: models ACTIVE."""
    db = tmp_path_factory.mktemp("ml-fleet") / "fleet.db"
    clock = ManualClock(start_s=1767571200)              # Monday 2026-01-05 00:00 UTC
    engine = engine_on(db, clock)
    engine.apply_profile(PROFILE, attach="all")
    rng = random.Random(17)
    events = []
    for _ in range(432):
        clock.advance(STEP_S)
        for thing, level in DEVICES.items():
            events += engine.accept(thing, report(round(bytes_out(rng, clock.now(), level))), clock.now_ms())
    assert events == []                                 # the normal rhythm raised nothing
    engine.store.close()
    return {"db": db, "now_s": clock.now()}


def replay(engine, clock, rng, steps, factor, things):
    """`steps` reports of every device; those in `things` send `factor` x their normal."""
    events = []
    for _ in range(steps):
        clock.advance(STEP_S)
        for thing, level in DEVICES.items():
            value = round(bytes_out(rng, clock.now(), level) * (factor if thing in things else 1))
            events += engine.accept(thing, report(value), clock.now_ms())
    return events


def test_a_fleet_wide_deviation_is_one_fleet_notice_not_six_device_alarms(trained, tmp_path):
    engine = engine_on(snapshot(trained["db"], tmp_path / "update.db"), ManualClock(trained["now_s"]))
    clock, rng = engine.clock, random.Random(3)
    events = replay(engine, clock, rng, 24, 5.0, set(DEVICES))      # a firmware update: x5 for 2 h
    assert events == []                                              # no device alarm ...
    notices = engine.violation_events(FLEET_THING)                   # ... one fleet notice
    assert [e["violationEventType"] for e in notices] == ["in-alarm"]
    [notice] = engine.active_violations(FLEET_THING)
    info = notice["violationEventAdditionalInfo"]
    assert notice["securityProfileName"] == "Fleet" and notice["behavior"]["name"] == "bytes-out"
    assert info["fleetEvent"]["direction"] == "above" and info["fleetEvent"]["devices"] >= 5
    assert "fleet-wide event" in info["explanation"] and "aws:all-bytes-out" in info["explanation"]
    assert [m["thingName"] for m in engine.alerts.messages] == [FLEET_THING]     # one alert, too
    events = replay(engine, clock, rng, 36, 1.0, set())              # back to normal
    assert events == [] and engine.active_violations() == []
    engine.sweep()                                                   # the sweep leaves the notice alone
    assert [e["violationEventType"] for e in engine.violation_events(FLEET_THING)] == ["in-alarm", "alarm-cleared"]
    assert engine.all_violations(thing="dev1") == []
    engine.store.close()


def test_a_lone_device_doing_the_same_still_alarms(trained, tmp_path):
    engine = engine_on(snapshot(trained["db"], tmp_path / "lone.db"), ManualClock(trained["now_s"]))
    events = replay(engine, engine.clock, random.Random(3), 24, 5.0, {"dev2"})
    assert [(e.thing, e.event_type) for e in events][:1] == [("dev2", "in-alarm")]
    assert engine.active_violations(FLEET_THING) == []
    assert len(engine.active_violations("dev2")) == 1
    info = events[0].additional_info
    assert info["anomalous"] and info["value"] > info["high"] and "above the learned normal band" in info["explanation"]
    engine.store.close()


def burst_then_again(db, now_s, verify=None):
    """dev1 bursts x5 for 15 min (an alarm), returns to normal, the operator verifies the alarm
    through the CLI, and an hour later the same burst recurs: the events of the recurrence."""
    clock = ManualClock(now_s)
    engine = engine_on(db, clock)
    rng = random.Random(5)
    first = replay(engine, clock, rng, 3, 5.0, {"dev1"}) + replay(engine, clock, rng, 3, 1.0, set())
    assert [(e.thing, e.event_type) for e in first] == [("dev1", "in-alarm"), ("dev1", "alarm-cleared")]
    engine.store.close()
    if verify:
        proc = run("violations", "verify", first[0].violation_id, verify, db=db)
        assert verify in proc.stdout
    engine = engine_on(db, clock)
    events = replay(engine, clock, rng, 6, 1.0, set()) + replay(engine, clock, rng, 3, 5.0, {"dev1"})
    engine.store.close()
    return [(e.thing, e.event_type) for e in events]


def test_benign_positive_through_the_cli_teaches_the_model_true_positive_does_not(trained, tmp_path):
    # Unverified, the recurring burst alarms again; so does one verified TRUE_POSITIVE ...
    assert burst_then_again(snapshot(trained["db"], tmp_path / "none.db"), trained["now_s"]) == [
        ("dev1", "in-alarm")]
    assert burst_then_again(snapshot(trained["db"], tmp_path / "tp.db"), trained["now_s"], "TRUE_POSITIVE") == [
        ("dev1", "in-alarm")]
    # ... while BENIGN_POSITIVE (or FALSE_POSITIVE) widened dev1's band: the same burst is normal.
    for state in ("BENIGN_POSITIVE", "FALSE_POSITIVE"):
        assert burst_then_again(snapshot(trained["db"], tmp_path / f"{state}.db"), trained["now_s"], state) == []
