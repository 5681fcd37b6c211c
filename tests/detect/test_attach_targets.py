"""Attach targets name things and groups by the naming rule (issue 10, item 11): a target such
as `thing:+#/x` (MQTT wildcards, a '/') is refused by the CLI, the API's engine and the config."""
import json
import shutil
import subprocess
import sys

import pytest

from garrison.detect.engine import Engine
from garrison.detect.state.store import Store, StoreError

from engine_support import max_connections

CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]
BAD_TARGETS = ["thing:+#/x", "thing:a/b", "thing:#", "group:+", "thing:" + "x" * 129, "group:pümp", "thing:a b"]


def cli(db, *argv, expect=0):
    proc = subprocess.run(CLI + list(argv) + ["--db", str(db)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(max_connections(name="P")))
    return path


def test_the_cli_refuses_attach_targets_that_break_the_naming_rule(tmp_path, profile_file):
    db = tmp_path / "e.db"
    cli(db, "profiles", "apply", str(profile_file))
    for bad in ("thing:+#/x", "group:+"):
        err = cli(db, "profiles", "attach", "P", bad, expect=2).stderr
        assert "names are 1-128 characters" in err and err.count("\n") == 1
        err = cli(db, "profiles", "apply", str(profile_file), "--attach", bad, expect=2).stderr
        assert "names are 1-128 characters" in err
    assert json.loads(cli(db, "profiles", "list", "--json").stdout)[0]["targets"] == []
    cli(db, "profiles", "attach", "P", "thing:pump-1")


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_the_engine_refuses_bad_attach_targets(tmp_path, target):
    engine = Engine(Store(str(tmp_path / "e.db")), ml=None)
    engine.apply_profile(max_connections(name="P"))
    with pytest.raises(StoreError):
        engine.attach("P", target)
    with pytest.raises(StoreError):
        engine.apply_profile(max_connections(name="P"), attach=target)
    assert engine.store.attachments_of("P") == []
    engine.store.close()
