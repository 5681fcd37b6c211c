"""`garrison-detect` as a subprocess, on a real database file."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from garrison.detect.engine import Engine
from garrison.detect.state.store import Store

from engine_support import max_connections, profile, behavior, validated

CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]


def run(*argv, db=None, env=None, expect=0):
    full_env = dict(os.environ, **(env or {}))
    args = list(argv) + (["--db", str(db)] if db else [])
    proc = subprocess.run(CLI + args, capture_output=True, text=True, env=full_env, timeout=60)
    assert proc.returncode == expect, (proc.returncode, proc.stdout, proc.stderr)
    if expect == 2:
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def db(tmp_path):
    return tmp_path / "cli.db"


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "conns.json"
    path.write_text(json.dumps(max_connections(limit=5)))
    return path


def seed_violation(db, thing="dev1"):
    """Evaluate a violating report into the database, as `serve` would."""
    engine = Engine(Store(db))
    try:
        engine.accept(thing, validated(connections=9), engine.clock.now_ms())
        return engine.active_violations(thing)[0]
    finally:
        engine.store.close()


def test_profiles_apply_list_show_delete(db, profile_file):
    out = run("profiles", "apply", str(profile_file), "--attach", "all", db=db).stdout
    assert out.strip() == "created security profile Conns (1 behaviors; attached to all)"
    assert "updated security profile Conns" in run("profiles", "apply", str(profile_file), db=db).stdout
    table = run("profiles", "list", db=db).stdout.splitlines()
    assert table[0].split() == ["PROFILE", "BEHAVIORS", "TARGETS"] and table[1].split() == ["Conns", "1", "all"]
    assert json.loads(run("profiles", "list", "--json", db=db).stdout) == [
        {"securityProfileName": "Conns", "behaviors": ["conns"], "targets": ["all"]}]
    shown = json.loads(run("profiles", "show", "Conns", db=db).stdout)
    assert shown["profile"] == max_connections(limit=5) and shown["targets"] == ["all"]
    run("profiles", "detach", "Conns", "all", db=db)
    run("profiles", "attach", "Conns", "thing:dev1", db=db)
    assert json.loads(run("profiles", "list", "--json", db=db).stdout)[0]["targets"] == ["thing:dev1"]
    run("profiles", "delete", "Conns", db=db)
    assert run("profiles", "list", db=db).stdout.strip() == "no security profiles"


def test_the_database_comes_from_garrison_db_too(db, profile_file):
    run("profiles", "apply", str(profile_file), env={"GARRISON_DB": str(db)})
    assert [p["securityProfileName"] for p in Store(db).list_profiles()] == ["Conns"]


def test_violations_list_events_and_verify(db, profile_file):
    run("profiles", "apply", str(profile_file), "--attach", "all", db=db)
    seeded = seed_violation(db)
    [active] = json.loads(run("violations", "list", "--active", "--json", db=db).stdout)
    assert active == seeded
    assert active["lastViolationValue"] == {"count": 9} and isinstance(active["violationStartTime"], float)
    assert json.loads(run("violations", "list", "--active", "--thing", "dev2", "--json", db=db).stdout) == []
    table = run("violations", "list", db=db).stdout
    assert active["violationId"] in table and "conns" in table and "active" in table
    out = run("violations", "verify", active["violationId"], "FALSE_POSITIVE", "--description", "lab device", db=db)
    assert "FALSE_POSITIVE" in out.stdout
    [event] = json.loads(run("violations", "events", "--json", db=db).stdout)
    assert (event["violationEventType"], event["violationId"], event["verificationState"],
            event["verificationStateDescription"]) == ("in-alarm", active["violationId"], "FALSE_POSITIVE", "lab device")
    assert "in-alarm" in run("violations", "events", "--thing", "dev1", db=db).stdout


def test_things_and_groups(db):
    assert "registered thing sensor-1" in run("things", "add", "sensor-1", db=db).stdout
    run("groups", "create", "quarantine", "--description", "isolated devices", db=db)
    run("groups", "add", "quarantine", "sensor-1", db=db)
    [group] = json.loads(run("groups", "list", "--json", db=db).stdout)
    assert (group["groupName"], group["things"], group["description"]) == ("quarantine", ["sensor-1"], "isolated devices")
    [thing] = json.loads(run("things", "list", "--json", db=db).stdout)
    assert thing["thingName"] == "sensor-1" and thing["groups"] == ["quarantine"] and thing["preRegistered"]
    assert "removed sensor-1 from quarantine" in run("groups", "remove", "quarantine", "sensor-1", db=db).stdout
    run("groups", "delete", "quarantine", db=db)
    run("things", "delete", "sensor-1", db=db)
    assert run("things", "list", db=db).stdout.strip() == "no things"
    assert run("actions", "list", db=db).stdout.strip() == "no mitigation actions"


@pytest.mark.parametrize("argv", [
    ("violations", "verify", "no-such-id", "UNKNOWN"),
    ("violations", "verify", "some-id", "NOT_A_STATE"),
    ("profiles", "show", "missing"),
    ("profiles", "apply", "/nonexistent/profile.json"),
    ("profiles", "attach", "missing", "all"),
    ("groups", "add", "no-group", "dev1"),
    ("things", "add", "bad name/with slash"),
    ("no-such-command",),
    ("violations", "list", "--bogus"),
])
def test_bad_input_is_one_line_and_exit_2(db, argv):
    run(*argv, db=db, expect=2)


def test_an_invalid_profile_is_one_line_naming_the_behavior(db, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(profile("Bad", behavior("ports", "aws:listening-tcp-ports", "less-than", {"count": 3}))))
    err = run("profiles", "apply", str(bad), db=db, expect=2).stderr
    assert "ports" in err and "less-than" in err
    bad.write_text("{not json")
    assert "not valid JSON" in run("profiles", "apply", str(bad), db=db, expect=2).stderr


@pytest.mark.parametrize("config, message", [
    ("strict = \"yes\"\n", "strict"),
    ("invalidation_period = \"two days\"\n", "invalidation_period"),
    ("colour = 3\n", "unknown setting 'colour'"),
    ("[actions]\n\"P/b\" = {type = \"reboot\", group = \"q\"}\n", "type must be one of"),
    ("[alerts]\nwebhooks = [\"ftp://x\"]\n", "webhook url"),
    ("[api]\nbind = \"localhost\"\n", "api.bind"),
    ("this is = = not toml", "not valid TOML"),
    ("[[profiles]]\nfile = \"missing.json\"\n", "cannot read"),
    ("[[profiles]]\nattach = \"all\"\n", "profiles[0].file: is required"),
    ("[ml]\ntraining_days = -1\n", "training_days"),
])
def test_serve_refuses_bad_config_in_one_line(db, tmp_path, config, message):
    path = tmp_path / "engine.toml"
    path.write_text(config)
    err = run("serve", "--broker", "mqtt://127.0.0.1:1", "--config", str(path), db=db, expect=2).stderr
    assert message in err


def test_serve_refuses_a_bad_broker_url(db):
    assert "broker URL" in run("serve", "--broker", "http://example", db=db, expect=2).stderr
    assert "--broker" in run("serve", db=db, expect=2).stderr


def test_help_explains_the_commands():
    out = run("--help").stdout
    for command in ("serve", "profiles", "violations", "things", "groups", "actions", "demo", "pki",
                    "broker-config"):
        assert command in out
    assert "--min-report-interval" in run("serve", "--help").stdout
    serve_help = " ".join(run("serve", "--help").stdout.split())
    assert "--clock-offset SECONDS simulation only" in serve_help  # a documented simulation feature


@pytest.mark.parametrize("command, module", [("demo", "garrison.detect.ops.demo"), ("pki", "garrison.detect.ops.pki"),
                                             ("broker-config", "garrison.detect.ops.brokerconf")])
def test_commands_with_their_own_parser_are_delegated(command, module):
    pytest.importorskip(module)
    proc = subprocess.run(CLI + [command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and f"garrison-detect {command}" in proc.stdout
