"""README's examples run as written (against a real broker and the engine's real front door)."""
import re
import subprocess
import sys
from pathlib import Path

from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.ingest.mqtt import MqttIngest
from ledger import MemoryLedger

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_two_setup_commands_are_the_ones_ci_runs():
    text = README.read_text()
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    assert "scripts/test.sh" in (README.parent / ".ci" / "run").read_text()


def test_library_example_publishes_and_is_accepted(mosquitto, tmp_path):
    (example,) = python_blocks()
    example = example.replace("mqtt://localhost:1883", mosquitto.url)
    example = example.replace("/tmp/garrison-example", str(tmp_path / "state"))
    ledger = MemoryLedger()
    engine = MqttIngest(mosquitto.url, Ingestor(ledger, min_interval_s=0), client_id="readme-engine")
    engine.start()
    try:
        assert engine.connected.wait(10)
        out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=60)
    finally:
        engine.stop()
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "[{'number': 101.3}]"
    assert re.fullmatch(r"report \d+ accepted", second)
    (stored,) = ledger.reports["pump-17"]
    assert stored["custom_metrics"]["pump_pressure_kpa"] == [{"number": 101.3}]
    assert "posture:sysctl_unhardened" in stored["custom_metrics"]   # the posture collector, on by default
