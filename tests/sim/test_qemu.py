"""Opt-in (`pytest -m slow tests/sim`): an emulated aarch64 Debian device reports to the engine on the host.

Builds (or reuses) the guest with firmware-sim/qemu/build-image.sh, boots it under
qemu-system-aarch64 -M virt with user networking, and watches its agent's reports reach a real
engine through the host's Mosquitto (10.0.2.2 inside the guest is the host's loopback).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from sim_helpers import FIRMWARE_SIM, ReportLog
from garrison.sim import FLEET_PROFILE

QEMU = FIRMWARE_SIM / "qemu"
CACHE = os.environ.get("CACHE", "/var/tmp/garrison-qemu")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def guest_image():
    missing = [t for t in ("qemu-system-aarch64", "debootstrap", "dpkg-deb", "cpio") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (apt-get install qemu-system-arm debootstrap cpio)")
    done = subprocess.run([str(QEMU / "build-image.sh")], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "CACHE": CACHE})
    assert done.returncode == 0, done.stdout + done.stderr
    return CACHE


def test_emulated_arm64_device_reports_reach_the_engine(guest_image, mosquitto, tmp_path):
    db = tmp_path / "engine.db"
    detect = [sys.executable, "-m", "garrison.detect.cli", "--db", str(db)]
    subprocess.run(detect + ["profiles", "apply", str(FLEET_PROFILE), "--attach", "all"], check=True,
                   capture_output=True, timeout=60)
    log = ReportLog(mosquitto.url, topics=("$aws/things/+/defender/metrics/+",
                                           "$aws/things/+/defender/metrics/+/accepted"))
    with open(tmp_path / "engine.log", "wb") as out:
        engine = subprocess.Popen(detect + ["serve", "--broker", mosquitto.url, "--min-report-interval", "0"],
                                  stdout=out, stderr=out)
    with open(tmp_path / "guest.log", "wb") as console:
        guest = subprocess.Popen([str(QEMU / "run-guest.sh"), str(mosquitto.port), "qemu-arm64", "5"],
                                 stdout=console, stderr=console, stdin=subprocess.DEVNULL,
                                 env={**os.environ, "CACHE": guest_image})
    try:
        arrived = log.wait_for(lambda l: len(l.replies["qemu-arm64"]) >= 2, timeout=600)
        console_text = (tmp_path / "guest.log").read_text(errors="replace")
        assert arrived, console_text[-3000:]
    finally:
        guest.terminate()
        guest.wait(30)
        engine.terminate()
        engine.wait(15)
        log.close()
    assert "aarch64" in console_text and "sock_diag unavailable" not in console_text
    assert [kind for kind, _ in log.replies["qemu-arm64"][:2]] == ["accepted", "accepted"]
    first = log.reports["qemu-arm64"][0]
    remotes = [c["remote_addr"] for c in first["metrics"]["tcp_connections"]["established_connections"]["connections"]]
    assert f"10.0.2.2:{mosquitto.port}" in remotes                 # the guest's own view of its broker link
    things = subprocess.run(detect + ["things", "list", "--json"], capture_output=True, text=True, timeout=60)
    assert "qemu-arm64" in things.stdout
    violations = json.loads(subprocess.run(detect + ["violations", "list", "--json"], capture_output=True,
                                           text=True, timeout=60).stdout or "[]")
    assert not [v for v in violations if v["thingName"] == "qemu-arm64"]   # a quiet device is normal
