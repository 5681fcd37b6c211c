"""Garrison firmware-sim: simulated fleets, attack scenarios on namespaced devices, a QEMU device.

Everything here produces reports with the agent's own wire-format code (`garrison.agent.report`),
so what the simulator sends is exactly what a real agent would send.
"""

from pathlib import Path

__all__ = ["PROFILES_DIR", "FLEET_PROFILE"]

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
FLEET_PROFILE = PROFILES_DIR / "fleet-profile.json"
