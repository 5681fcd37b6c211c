"""The engine configuration the detect unit reads (/etc/garrison/detect.toml, shipped as
packaging/config/detect.toml): it loads, names only real files and settings, and the unit's own
command line serves with it on a real broker (the dry-run quarantine included)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from garrison.agent import report
from garrison.agent.transports.paho_compat import new_client
from garrison.collectors.base import ListeningSocket
from fixtures import free_port, wait_for
from pkg_units import DETECT_UNIT, PACKAGING, environment, exec_argv, read_unit

pytest.importorskip("garrison.detect.cli", reason="the detect engine is not there yet")
from garrison.detect import config as configuration  # noqa: E402
from garrison.detect.respond.actions import Actions  # noqa: E402
from garrison.detect.judge.profiles import load_profile  # noqa: E402

DETECT_TOML = PACKAGING / "config" / "detect.toml"
INSTALLED_AT = "/etc/garrison/detect.toml"


def test_the_unit_reads_the_shipped_config():
    unit = read_unit(DETECT_UNIT)
    argv = exec_argv(unit, {**environment(unit), "STATE_DIRECTORY": "/s"})
    assert argv[argv.index("--config") + 1] == INSTALLED_AT
    assert DETECT_TOML.name == os.path.basename(INSTALLED_AT)


def test_the_shipped_config_loads_with_every_file_it_names():
    config = configuration.load(str(DETECT_TOML))
    assert config.api_bind == "127.0.0.1:8765" and config.api_token is None     # token generated at start
    assert config.disconnect_duration_unit_s == 60 and config.sweep_interval_s == 60
    assert config.invalidation_period_s == 2 * 86400 and config.dry_run is False
    assert config.alerts == {"log": True, "mqtt": {"topic": "garrison/alerts/{thing}", "qos": 1}}
    [(path, target)] = config.profiles
    assert target == "all" and path == str(PACKAGING / "config" / "profiles" / "baseline.json")
    profile = load_profile(path)
    assert profile.name == "baseline"
    assert "aws:disconnect-duration" in {b.metric for b in profile.behaviors}
    [quarantine] = Actions(config.actions).rules["baseline/no-backdoor-ports"]
    assert (quarantine.type, quarantine.group, quarantine.dry_run) == ("add-thing-to-group", "quarantine", True)
    assert profile.behavior("no-backdoor-ports").metric == "aws:listening-tcp-ports"   # the rule's behavior exists


def _detect(db, *argv):
    done = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", str(db), *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_unit_command_serves_with_the_shipped_config(mosquitto, tmp_path):
    unit = read_unit(DETECT_UNIT)
    api_port = free_port()
    argv = exec_argv(unit, {**environment(unit), "STATE_DIRECTORY": str(tmp_path),
                            "GARRISON_BROKER": mosquitto.url,
                            "GARRISON_DETECT_OPTS": f"--api-bind 127.0.0.1:{api_port}"})
    assert argv[0] == "/usr/bin/garrison-detect"
    argv = [sys.executable, "-m", "garrison.detect.cli"] + [str(DETECT_TOML) if a == INSTALLED_AT else a for a in argv[1:]]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log)
    db = tmp_path / "garrison.db"
    try:
        wait_for(lambda: "serving:" in log_path.read_text() or proc.poll() is not None, 30, "serve to start")
        assert proc.poll() is None, log_path.read_text()
        [profile] = _detect(db, "profiles", "list", "--json")
        assert profile["securityProfileName"] == "baseline" and profile["targets"] == ["all"]
        assert [g["groupName"] for g in _detect(db, "groups", "list", "--json")] == ["quarantine"]
        token = tmp_path / "garrison.db.api-token"
        assert token.stat().st_mode & 0o777 == 0o600

        # a device opens a backdoor port: the quarantine rule runs, as a dry run
        client = new_client("cfg-dev")
        client.connect(mosquitto.host, mosquitto.port)
        client.loop_start()
        try:
            backdoor = report.build(1, listening_tcp=[ListeningSocket("tcp", 4, "0.0.0.0", 4444)])
            client.publish(report.topic("cfg-dev", "json"), report.encode(backdoor), qos=1).wait_for_publish(10)
            [entry] = wait_for(lambda: _detect(db, "actions", "list", "--json"), 30, "the quarantine rule")
        finally:
            client.loop_stop()
            client.disconnect()
        assert (entry["thingName"], entry["outcome"], entry["dryRun"]) == ("cfg-dev", "dry-run", True)
        assert [g["things"] for g in _detect(db, "groups", "list", "--json")] == [[]]   # nothing moved
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0, log_path.read_text()
