"""Profiles as code (profiles sync), ValidateSecurityProfileBehaviors,
ListSecurityProfilesForTarget, and a profile's own alertTargets delivered beside the
engine-wide targets (to a real Mosquitto)."""
import json
import subprocess
import sys
import threading

import pytest

from garrison.agent.transports.paho_compat import new_client
from garrison.detect.clock import ManualClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.respond.alerts import AlertDispatcher, targets_from_config
from garrison.detect.state.store import Store

from api_support import served
from engine_support import Collect, behavior, max_connections, profile, validated
from fixtures import wait_for


def cli(db, *argv):
    return subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", str(db), *argv],
                          capture_output=True, text=True)


def write(directory, name, doc):
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(doc))


def test_sync_plans_applies_and_is_a_no_op_when_run_again(tmp_path):
    db, files = tmp_path / "e.db", tmp_path / "profiles"
    assert cli(db, "groups", "create", "cams").returncode == 0
    write(files, "a", dict(max_connections(5, name="A"), targets=["all"]))
    write(files, "b", dict(max_connections(9, name="B"), targets=["group:cams", "thing:gw-1"]))
    dry = cli(db, "profiles", "sync", str(files), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["would create A", "would create B", "would attach A all",
                                       "would attach B group:cams", "would attach B thing:gw-1"]
    assert cli(db, "profiles", "list", "--json").stdout.strip() == "[]"        # nothing changed
    first = cli(db, "profiles", "sync", str(files))
    assert first.stdout.splitlines() == [line[len("would "):] for line in dry.stdout.splitlines()]
    again = cli(db, "profiles", "sync", str(files))
    assert again.returncode == 0 and again.stdout.startswith("nothing to do"), again.stdout
    # the files change: B's limit and targets; C appears; A's file goes away
    (files / "a.json").unlink()
    write(files, "b", dict(max_connections(7, name="B"), targets=["group:cams"]))
    write(files, "c", dict(max_connections(3, name="C"), targets=["thing:gw-1"]))
    plan = cli(db, "profiles", "sync", str(files), "--prune")
    assert plan.stdout.splitlines() == ["update B", "detach B thing:gw-1", "create C", "attach C thing:gw-1",
                                        "delete A"], plan.stdout + plan.stderr
    listed = {p["securityProfileName"]: p for p in json.loads(cli(db, "profiles", "list", "--json").stdout)}
    assert {n: p["targets"] for n, p in listed.items()} == {"B": ["group:cams"], "C": ["thing:gw-1"]}
    assert cli(db, "profiles", "sync", str(files), "--prune").stdout.startswith("nothing to do")


def test_sync_is_all_or_nothing(tmp_path):
    db, files = tmp_path / "e.db", tmp_path / "profiles"
    for i in range(6):   # a sixth profile on "all" is refused: none of them is applied
        write(files, f"p{i}", dict(max_connections(5, name=f"P{i}"), targets=["all"]))
    failed = cli(db, "profiles", "sync", str(files))
    assert failed.returncode != 0 and "5 security profiles" in failed.stderr
    assert cli(db, "profiles", "list", "--json").stdout.strip() == "[]"
    bad = tmp_path / "bad"
    write(bad, "x", {"securityProfileName": "X", "behaviors": [{"name": "b", "metric": "aws:nope"}]})
    result = cli(db, "profiles", "sync", str(bad))
    assert result.returncode != 0 and "x.json" in result.stderr and "aws:nope" in result.stderr


def test_validate_behaviors_cli_and_api(tmp_path):
    db = tmp_path / "e.db"
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(max_connections(5)))
    bad.write_text(json.dumps({"behaviors": [
        behavior("ports", "aws:listening-tcp-ports", "less-than", {"count": 3}),
        behavior("ok", "aws:num-listening-tcp-ports", "less-than", {"count": 3}),
        behavior("ok", "aws:num-listening-tcp-ports", "less-than", {"count": 4})]}))
    assert cli(db, "profiles", "validate", str(good)).returncode == 0
    result = cli(db, "profiles", "validate", str(bad), "--json")
    assert result.returncode == 1
    errors = [e["errorMessage"] for e in json.loads(result.stdout)["validationErrors"]]
    assert len(errors) == 2 and "less-than" in errors[0] and "unique" in errors[1]
    engine = Engine(Store(db), ManualClock(), Config())
    assert engine.store.list_profiles() == []    # nothing was stored
    with served(engine) as api:
        assert api("POST", "/security-profile-behaviors/validate", {"behaviors": max_connections(5)["behaviors"]}) == \
            (200, {"valid": True, "validationErrors": []})
        status, body = api("POST", "/security-profile-behaviors/validate", json.loads(bad.read_text()))
        assert status == 200 and not body["valid"] and len(body["validationErrors"]) == 2


def test_profiles_for_target(tmp_path):
    engine = Engine(Store(tmp_path / "e.db"), ManualClock(), Config())
    engine.create_group("cams")
    engine.add_to_group("cams", "cam-1")
    engine.apply_profile(max_connections(5, name="Fleet"), attach="all")
    engine.apply_profile(max_connections(5, name="Cams"), attach="group:cams")
    engine.apply_profile(max_connections(5, name="Mine"), attach="thing:cam-1")
    names = lambda result: [(m["securityProfileIdentifier"]["name"], m["target"]["arn"])  # noqa: E731
                            for m in result["securityProfileTargetMappings"]]
    assert names(engine.profiles_for_target("thing:cam-1")) == [("Mine", "thing:cam-1")]
    assert names(engine.profiles_for_target("thing:cam-1", recursive=True)) == [
        ("Cams", "group:cams"), ("Fleet", "all"), ("Mine", "thing:cam-1")]
    with served(engine) as api:
        status, body = api("GET", "/security-profiles-for-target", securityProfileTargetArn="group:cams")
        assert status == 200 and names(body) == [("Cams", "group:cams")]
        status, body = api("GET", "/security-profiles-for-target", securityProfileTargetArn="thing:cam-1",
                           recursive="true")
        assert names(body) == [("Cams", "group:cams"), ("Fleet", "all"), ("Mine", "thing:cam-1")]
    out = cli(tmp_path / "e.db", "profiles", "for-target", "thing:cam-1", "--recursive")
    assert out.returncode == 0 and out.stdout.splitlines()[0] == "Cams\tgroup:cams"


def test_a_profiles_own_alert_targets_get_its_alerts_beside_the_engine_wide_ones(tmp_path, mosquitto):
    got, ready = [], threading.Event()
    reader = new_client("alert-reader")
    reader.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    reader.on_subscribe = lambda *a: ready.set()
    reader.connect(mosquitto.host, mosquitto.port)
    reader.loop_start()
    reader.subscribe("garrison/alerts/#", qos=1)
    assert ready.wait(10)
    publisher = new_client("engine-alerts")
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()

    clock = ManualClock()
    everyone = Collect()
    engine = Engine(Store(tmp_path / "e.db"), clock, Config(), alerts=everyone)
    engine.alert_target_builder = lambda conf: AlertDispatcher(targets_from_config(conf, mqtt_publish=publisher))
    own = dict(max_connections(2, name="Routed"), alertTargets={
        "SNS": {"alertTargetArn": "arn:aws:sns:eu-west-1:123456789012:x", "roleArn": "arn:aws:iam::1:role/x"},
        "mqtt": {"topic": "garrison/alerts/routed/{thing}"}})
    engine.apply_profile(own, attach="all")
    engine.apply_profile(max_connections(2, name="Plain"), attach="all")
    engine.accept("dev1", validated(connections=5), clock.now_ms())
    wait_for(lambda: got, what="the profile's own MQTT alert")
    assert [(t, m["securityProfileName"]) for t, m in got] == [("garrison/alerts/routed/dev1", "Routed")]
    assert sorted(m["securityProfileName"] for m in everyone.messages) == ["Plain", "Routed"]
    wait_for(lambda: engine.store.pending_alerts() == [], what="both alerts out of the outbox")
    sns = cli(tmp_path / "x.db", "profiles", "apply", str(_file(tmp_path, own)))
    assert "alertTargets.SNS" in sns.stderr
    for client in (reader, publisher):
        client.disconnect()
        client.loop_stop()


def _file(tmp_path, doc):
    path = tmp_path / "own.json"
    path.write_text(json.dumps(doc))
    return path
