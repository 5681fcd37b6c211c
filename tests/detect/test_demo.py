"""garrison-detect demo end to end: real broker, engine and agent processes; an alarm is seen."""
import subprocess
import sys

import pytest

from garrison.detect.ops import demo


def test_demo_raises_and_clears_the_alarm(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "garrison.detect.ops.demo", "--duration", "30", "--interval", "6",
                           "--trip-after", "1", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "report" in out and "accepted" in out and " 0 rejected" in out
    assert "audit: DEVICE_CERTIFICATE_EXPIRING_CHECK MEDIUM on demo-expiring" in out, out
    assert "ALARM   demo-device: demo/NoBackdoorListener in-alarm" in out, out
    if "opened TCP port 4444" in out:  # else something else holds 4444 on this machine
        assert "CLEARED demo-device: demo/NoBackdoorListener alarm-cleared" in out, out
        assert "alarms: 1 raised, 1 cleared" in out
    # the engine stored it: the violation history survives the demo
    events = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "violations", "events", "--json",
                             "--db", str(tmp_path / "garrison.db")], capture_output=True, text=True)
    assert events.returncode == 0 and "NoBackdoorListener" in events.stdout
    # and every child is gone
    assert (tmp_path / "engine.log").exists() and (tmp_path / "agent.log").exists()


@pytest.mark.parametrize("argv,message", [
    (["--duration", "0"], "--duration must be more than 0"),
    (["--interval", "2"], "--interval must be at least 5.5 s"),
])
def test_demo_refuses_bad_arguments(capsys, argv, message):
    assert demo.main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_profile_is_an_aws_profile_that_the_engine_loads(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "profiles", "apply", str(demo.PROFILE),
                           "--attach", "all", "--db", str(tmp_path / "g.db")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert demo._trip_port() == 4444
