"""The detect unit bounds the engine's descriptors explicitly (issue 10, item 4): LimitNOFILE is
one number (soft = hard), and the real `garrison-detect serve` runs under it."""
import resource
import shutil
import signal
import subprocess
import sys

from fixtures import Mosquitto, wait_for
from pkg_units import DETECT_UNIT, read_unit, setting

CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]


def unit_nofile() -> int:
    value = setting(read_unit(DETECT_UNIT), "LimitNOFILE")
    assert value.isdigit(), f"LimitNOFILE={value}: one number, so soft and hard are the same"
    return int(value)


def test_the_detect_unit_sets_one_descriptor_limit():
    assert 1024 <= unit_nofile() <= 65536


def test_serve_runs_under_the_units_descriptor_limit(tmp_path):
    limit = unit_nofile()
    broker = Mosquitto(tmp_path / "broker").start()
    log = tmp_path / "serve.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(CLI + ["serve", "--broker", broker.url, "--db", str(tmp_path / "e.db")],
                                    stdout=out, stderr=out,
                                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
        try:
            wait_for(lambda: "serving:" in log.read_text() or proc.poll() is not None, 30, "serve to start")
            assert proc.poll() is None, log.read_text()
            limits = open(f"/proc/{proc.pid}/limits").read().splitlines()
            assert [line.split()[3:5] for line in limits if line.startswith("Max open files")] == \
                [[str(limit), str(limit)]]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        assert proc.returncode == 0, log.read_text()
    finally:
        broker.stop()
