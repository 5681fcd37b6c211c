"""A simulated fleet judged by the real engine with the fleet profile: each attack caught, no false alarm."""
import json
import subprocess
import sys
import time

import pytest

from garrison.sim import FLEET_PROFILE
from garrison.sim.attacks import AttackSpec
from garrison.sim.fleet import Fleet, Publisher

pytest.importorskip("garrison.detect.cli")

EXPECTED = {"camera-0001": "backdoor-tcp-ports", "gateway-0001": "c2-destinations",
            "camera-0002": "ddos-bytes-out", "sensor-0001": "scan-connections",
            "gateway-0002": "exfil-sustained-bytes-out", "sensor-0002": "silent-device",
            "probe": "silent-device"}         # the probe reports once, then is silent too
SCENARIO = {"camera-0001": "backdoor", "gateway-0001": "c2", "camera-0002": "ddos", "sensor-0001": "scan",
            "gateway-0002": "exfil", "sensor-0002": "silent"}
# Reports come every 0.2 s of wall time (10 simulated seconds at 50x); aws:disconnect-duration
# counts half seconds, so the profile's 10 units without a report are 5 s (25 missed reports).
ENGINE_CONFIG = 'sweep_interval = "1s"\ndisconnect_duration_unit = "0.5s"\n'


def detect(db, *argv):
    done = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "--db", str(db), *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_engine_flags_every_attacked_device_and_no_other(mosquitto, tmp_path):
    db = tmp_path / "engine.db"
    detect(db, "profiles", "apply", str(FLEET_PROFILE), "--attach", "all")
    config = tmp_path / "engine.toml"
    config.write_text(ENGINE_CONFIG)
    with open(tmp_path / "engine.log", "wb") as out:
        engine = subprocess.Popen([sys.executable, "-m", "garrison.detect.cli", "--db", str(db), "serve", "--broker",
                                   mosquitto.url, "--min-report-interval", "0", "--config", str(config)],
                                  stdout=out, stderr=out)
    try:
        attacks = [AttackSpec.parse(f"{s}@{d}@60") for d, s in SCENARIO.items()]
        # Engine windows run on the wall clock: a short simulated interval at a modest acceleration
        # keeps a 300 s window's worth of normal traffic realistic (see docs/firmware-sim.md).
        fleet = Fleet(30, seed=11, interval=10, attacks=attacks)
        publisher = Publisher(mosquitto.url)
        deadline = time.monotonic() + 60
        while publisher.accepted == 0 and time.monotonic() < deadline:   # the engine is subscribed
            publisher("$aws/things/probe/defender/metrics/json", b'{"header":{"report_id":1,"version":"1.0"},'
                      b'"metrics":{"listening_tcp_ports":{"ports":[],"total":0}}}')
            time.sleep(0.5)
        assert publisher.accepted, "the engine never answered"
        summary = fleet.run(publisher, duration=600, accelerate=50)
        publisher.close(linger=2.0)
        assert publisher.rejected == 0 and publisher.accepted >= summary.reports
    finally:
        engine.terminate()
        engine.wait(15)
    violations = json.loads(detect(db, "violations", "list", "--json"))
    fired = {}
    for v in violations:
        fired.setdefault(v["thingName"], set()).add(v["behavior"]["name"])
    for device, behavior in EXPECTED.items():
        assert behavior in fired.get(device, set()), (device, fired.get(device))
    innocent = set(fired) - set(EXPECTED)
    assert not innocent, {d: fired[d] for d in innocent}          # no false alarm on 24 clean devices
    assert fired["sensor-0002"] == {"silent-device"}              # silence, and nothing else, on the silent one
