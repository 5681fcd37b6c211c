"""The example firmware embeds the agent as a library; its reports carry its own custom metrics."""
import subprocess
import sys

from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.ingest.mqtt import MqttIngest
from ledger import MemoryLedger
from sim_helpers import FIRMWARE_SIM, ReportLog


def test_example_firmware_reports_its_custom_metrics(mosquitto, tmp_path):
    log = ReportLog(mosquitto.url)
    # the engine's real front door answers: a report leaves the agent's spool with its answer
    engine = MqttIngest(mosquitto.url, Ingestor(MemoryLedger(), min_interval_s=0), client_id="firmware-engine")
    engine.start()
    try:
        assert engine.connected.wait(10)
        done = subprocess.run([sys.executable, str(FIRMWARE_SIM / "example_firmware.py"), "--thing",
                               "greenhouse-7", "--broker", mosquitto.url, "--interval", "0.5", "--state-dir",
                               str(tmp_path / "state"), "--reports", "2", "--loop-period", "0.05"],
                              capture_output=True, text=True, timeout=60)
    finally:
        engine.stop()
    assert done.returncode == 0, done.stderr
    assert log.wait_for(lambda l: len(l.reports["greenhouse-7"]) >= 2, timeout=20), done.stderr
    log.close()
    first, second = log.reports["greenhouse-7"][:2]
    assert first["header"]["report_id"] < second["header"]["report_id"]
    for report in (first, second):
        custom = report["custom_metrics"]
        assert custom["firmware_version"] == [{"string_list": ["2.4.1"]}]
        (reading,) = custom["temperature_c"]
        assert set(reading) == {"number"} and -40 < reading["number"] < 120
        assert "network_stats" in report["metrics"]          # the agent's own metrics are there too


def test_example_firmware_refuses_a_bad_broker_url(tmp_path):
    done = subprocess.run([sys.executable, str(FIRMWARE_SIM / "example_firmware.py"), "--thing", "g",
                           "--broker", "http://nowhere", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
