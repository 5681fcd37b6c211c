"""firmware-sim is not a package of the distribution: make `garrison.sim` importable for its tests."""
import sys
from pathlib import Path

FIRMWARE_SIM = Path(__file__).resolve().parents[2] / "firmware-sim"
if str(FIRMWARE_SIM) not in sys.path:
    sys.path.insert(0, str(FIRMWARE_SIM))
