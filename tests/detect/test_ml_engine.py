"""ML Detect in the engine with real garrison.detect.judge.ml models: a device learns its daily rhythm, a step
change raises an alarm that explains itself, and model status (per behavior and per thing) is
visible through the engine, the CLI (subprocess on a real SQLite file) and the HTTP API."""
import json
import math
import random
import sqlite3
import time

import pytest

pytest.importorskip("garrison.detect.judge.ml")

from garrison.detect.api.server import ApiServer  # noqa: E402
from garrison.detect.clock import ManualClock  # noqa: E402
from garrison.detect.config import Config  # noqa: E402
from garrison.detect.engine import Engine  # noqa: E402
from garrison.detect.state.store import NotFound, Store, StoreError  # noqa: E402

from engine_support import Collect, behavior, profile, validated  # noqa: E402
from test_cli import run  # noqa: E402
from test_http_api import TOKEN, call  # noqa: E402

STEP_S = 300
ML = {"training_days": 1, "min_datapoints": 200, "retrain_every_s": 3600}
PROFILE = profile("Fleet", behavior("bytes-out", "aws:all-bytes-out", mlDetectionConfig={"confidenceLevel": "HIGH"}),
                  behavior("few-conns", "aws:num-established-tcp-connections", "less-than", {"count": 50}))


def bytes_out(rng, ts_s, level=40_000.0):
    """A daily rhythm (x9 peak to trough) with lognormal noise, as a real device's upload."""
    hour = ts_s % 86400 / 3600
    return round(math.exp(math.log(level) + 1.1 * math.sin(2 * math.pi * (hour - 8) / 24) + rng.gauss(0, 0.15)))


def report(value):
    return validated(network_stats={"bytes_in": value // 3, "bytes_out": value, "packets_in": 10, "packets_out": 10})


def engine_on(db, clock, alerts=None):
    return Engine(Store(db), clock, Config(ml=dict(ML)), alerts=alerts if alerts is not None else Collect())


def snapshot(db, to):
    """A consistent copy of a live SQLite database (the online backup API)."""
    source, target = sqlite3.connect(str(db)), sqlite3.connect(str(to))
    with target:
        source.backup(target)
    source.close()
    target.close()
    return to


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """dev1: two days of its normal rhythm (trained: ACTIVE); dev2: three reports (PENDING_BUILD).
    The clock ends near wall time, so the CLI (wall clock) sees the same statuses. `early` is a
    copy of the database after dev1's first 5 reports."""
    work = tmp_path_factory.mktemp("ml-engine")
    db, early = work / "ml.db", work / "early.db"
    rng = random.Random(20261125)
    clock = ManualClock(start_s=(int(time.time()) // 86400 - 2) * 86400)   # midnight UTC, two days ago
    engine = engine_on(db, clock)
    engine.apply_profile(PROFILE, attach="all")
    statuses, events = [], []
    for k in range(2 * 288):
        clock.advance(STEP_S)
        events += engine.accept("dev1", report(bytes_out(rng, clock.now())), clock.now_ms())
        if k < 3:
            events += engine.accept("dev2", report(bytes_out(rng, clock.now(), 20_000)), clock.now_ms())
        if k == 4:
            snapshot(db, early)
            early_summaries = engine.ml_training_summaries()
        if k % 12 == 11:
            statuses.append(engine.ml_training_summaries(thing="dev1")["thingSummaries"][0]["modelStatus"])
    engine.store.close()
    config = work / "engine.toml"
    config.write_text("[ml]\n" + "".join(f"{k} = {v}\n" for k, v in ML.items()))
    return {"db": db, "early": early, "config": config, "now_s": clock.now(), "events": events,
            "statuses": statuses, "early_summaries": early_summaries, "rng": rng}


def test_a_normal_daily_rhythm_is_learned_without_alarms_and_status_moves_to_active(fleet):
    assert fleet["events"] == []                      # two days of rhythm: not one alarm
    statuses = fleet["statuses"]                      # dev1's status every hour
    first_active = statuses.index("ACTIVE")
    assert 20 <= first_active <= 26                   # after training_days (1) at the next build
    assert set(statuses[:first_active]) == {"PENDING_BUILD"} and set(statuses[first_active:]) == {"ACTIVE"}
    early = fleet["early_summaries"]
    [overall] = early["summaries"]
    assert overall["modelStatus"] == "PENDING_BUILD" and overall["modelStatusCounts"] == {
        "PENDING_BUILD": 2, "ACTIVE": 0, "EXPIRED": 0}
    dev1 = next(s for s in early["thingSummaries"] if s["thingName"] == "dev1")
    assert (dev1["modelStatus"], dev1["datapoints"], dev1["datapointsCollectionPercentage"]) == (
        "PENDING_BUILD", 5, 2.5)
    assert dev1["basis"] == "none"                    # no model yet, no fleet prior: no verdict


def test_a_step_change_raises_an_alarm_that_explains_itself(fleet, tmp_path):
    db = snapshot(fleet["db"], tmp_path / "step.db")
    clock = ManualClock(fleet["now_s"])
    alerts = Collect()
    engine = engine_on(db, clock, alerts)
    rng = random.Random(7)
    clock.advance(STEP_S)
    normal = bytes_out(rng, clock.now())
    assert engine.accept("dev1", report(normal), clock.now_ms()) == []
    clock.advance(STEP_S)
    stepped = bytes_out(rng, clock.now()) * 10        # the device suddenly uploads x10
    [start] = engine.accept("dev1", report(stepped), clock.now_ms())
    assert start.event_type == "in-alarm" and start.metric_value == {"count": stepped}
    info = start.additional_info
    assert info["confidenceLevel"] == "HIGH" and info["modelStatus"] == "ACTIVE" and info["anomalous"] is True
    assert info["metric"] == "aws:all-bytes-out" and info["value"] == stepped
    assert 0 < info["low"] < info["expected"] < info["high"] < stepped          # the learned band
    assert info["basis"] == "device" and info["kind"] == "spike" and info["score"] > info["limit"] == 6.5
    assert str(stepped) in info["explanation"] and "above the learned normal band" in info["explanation"]
    assert f"[{round(info['low'])}, {round(info['high'])}]" in info["explanation"]
    json.dumps(info, allow_nan=False)                                            # strict JSON
    # the record, the event and the alert all carry it
    [active] = engine.active_violations("dev1")
    assert active["violationEventAdditionalInfo"] == info
    assert engine.violation_events("dev1")[-1]["violationEventAdditionalInfo"] == info
    message = alerts.messages[-1]
    assert message["violationEventType"] == "in-alarm" and message["violationId"] == start.violation_id
    assert message["violationEventAdditionalInfo"] == info and message["confidenceLevel"] == "HIGH"
    assert message["explanation"] == info["explanation"]
    # back to normal: the clearing event carries the conforming judgement
    clock.advance(STEP_S)
    [end] = engine.accept("dev1", report(bytes_out(rng, clock.now())), clock.now_ms())
    assert end.event_type == "alarm-cleared" and end.additional_info["anomalous"] is False
    assert "inside the learned normal band" in end.additional_info["explanation"]
    engine.store.close()


def test_summaries_per_behavior_and_per_thing_with_filters(fleet, tmp_path):
    engine = engine_on(snapshot(fleet["db"], tmp_path / "s.db"), ManualClock(fleet["now_s"]))
    result = engine.ml_training_summaries()
    [overall] = result["summaries"]                   # the rule behavior has no model
    assert overall["securityProfileName"] == "Fleet" and overall["behaviorName"] == "bytes-out"
    assert overall["modelStatus"] == "ACTIVE" and overall["datapointsCollectionPercentage"] == 100.0
    assert overall["modelStatusCounts"] == {"PENDING_BUILD": 1, "ACTIVE": 1, "EXPIRED": 0}
    assert overall["trainingDataCollectionStartDate"] < overall["lastModelRefreshDate"] <= fleet["now_s"]
    by_thing = {s["thingName"]: s for s in result["thingSummaries"]}
    assert (by_thing["dev1"]["modelStatus"], by_thing["dev1"]["datapoints"], by_thing["dev1"]["basis"]) == (
        "ACTIVE", 576, "device")
    assert (by_thing["dev2"]["modelStatus"], by_thing["dev2"]["datapoints"], by_thing["dev2"]["basis"]) == (
        "PENDING_BUILD", 3, "none")
    assert by_thing["dev2"]["datapointsCollectionPercentage"] == 1.5
    # the fleet prior, once built, is what judges dev2 (and any newcomer) from then on
    engine.recompute_fleet_stats()
    engine.add_thing("dev3")                          # under the profile (attached to all), no model yet
    result = engine.ml_training_summaries(thing="dev3")
    [dev3] = result["thingSummaries"]
    assert (dev3["modelStatus"], dev3["datapoints"], dev3["basis"]) == ("PENDING_BUILD", 0, "fleet")
    assert result["summaries"][0]["fleetPrior"]["models"] == 1
    assert engine.ml_training_summaries(profile="Fleet", behavior="bytes-out", thing="dev2")["thingSummaries"][0][
        "basis"] == "fleet"
    with pytest.raises(NotFound):
        engine.ml_training_summaries(profile="Nope")
    with pytest.raises(NotFound):
        engine.ml_training_summaries(thing="nobody")
    with pytest.raises(NotFound):
        engine.ml_training_summaries(behavior="nope")
    with pytest.raises(StoreError, match="no mlDetectionConfig"):
        engine.ml_training_summaries(profile="Fleet", behavior="few-conns")
    engine.store.close()


def test_status_per_thing_in_the_cli(fleet):
    early = json.loads(run("ml", "summaries", "--config", str(fleet["config"]), "--json", db=fleet["early"]).stdout)
    assert [(s["thingName"], s["modelStatus"], s["datapoints"]) for s in early["thingSummaries"]] == [
        ("dev1", "PENDING_BUILD", 5), ("dev2", "PENDING_BUILD", 3)]
    late = json.loads(run("ml", "summaries", "--thing", "dev1", "--config", str(fleet["config"]), "--json",
                          db=fleet["db"]).stdout)
    [dev1] = late["thingSummaries"]
    assert (dev1["modelStatus"], dev1["datapoints"], dev1["datapointsCollectionPercentage"]) == ("ACTIVE", 576, 100.0)
    assert late["summaries"][0]["modelStatus"] == "ACTIVE"
    table = run("ml", "summaries", "--profile", "Fleet", "--config", str(fleet["config"]), db=fleet["db"]).stdout
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["PROFILE", "BEHAVIOR", "THING", "STATUS"]
    assert lines[1].split()[:6] == ["Fleet", "bytes-out", "(2", "things)", "ACTIVE", "-"]
    assert lines[2].split()[:7] == ["Fleet", "bytes-out", "dev1", "ACTIVE", "576", "100%", "device"]
    assert lines[3].split()[:7] == ["Fleet", "bytes-out", "dev2", "PENDING_BUILD", "3", "1.5%", "none"]
    run("ml", "summaries", "--thing", "nobody", db=fleet["db"], expect=2)
    run("ml", "summaries", "--profile", "Fleet", "--behavior", "few-conns", db=fleet["db"], expect=2)


def test_status_per_thing_over_http(fleet, tmp_path):
    for db, expected in ((fleet["early"], "PENDING_BUILD"), (fleet["db"], "ACTIVE")):
        engine = engine_on(snapshot(db, tmp_path / f"api-{expected}.db"), ManualClock(fleet["now_s"]))
        server = ApiServer(engine, TOKEN, "127.0.0.1", 0).start()
        try:
            path = "/behavior-model-training/summaries?securityProfileName=Fleet&thingName=dev1"
            assert call(server, "GET", path, token=None)[0] == 401
            status, body = call(server, "GET", path)
            assert status == 200
            [overall], [dev1] = body["summaries"], body["thingSummaries"]
            assert overall["modelStatus"] == dev1["modelStatus"] == expected and dev1["thingName"] == "dev1"
            status, body = call(server, "GET", "/behavior-model-training/summaries")
            assert status == 200 and {s["thingName"] for s in body["thingSummaries"]} == {"dev1", "dev2"}
            status, body = call(server, "GET", "/behavior-model-training/summaries?thingName=nobody")
            assert status == 404 and body["error"]["code"] == "ResourceNotFound"
        finally:
            server.stop()
            engine.store.close()
