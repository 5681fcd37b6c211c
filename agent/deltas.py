"""Network deltas from cumulative interface counters, persisted across restarts.

The kernel's counters count since the interface came up. A report carries the traffic since
the previous report, so we keep the previous counters in STATE_DIR/counters.json.

Our choice for counters that go backwards (reboot, interface re-created, 32-bit wrap) and for a
changed kernel boot id: that interface contributes 0 this round and its baseline resets. We may
miss one interval of its traffic but never report a spike, and never a negative number. An
interface seen for the first time also contributes 0 (its counters hold traffic from before the
agent's watch), which makes the first report after a fresh state directory all zeros.
"""

import logging
from pathlib import Path
from typing import Dict, Mapping, Optional

from garrison.wire.schema import NETWORK_STATS_KEYS
from garrison.agent.statefile import read_json, try_write_json

log = logging.getLogger(__name__)
KEYS = tuple(NETWORK_STATS_KEYS)  # bytes_in, bytes_out, packets_in, packets_out
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> Optional[str]:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return None


class NetworkDeltas:
    """`update(counters)` -> deltas since the previous call (or the previous process)."""

    def __init__(self, state_dir: Path, boot_id: Optional[str] = None, persist: bool = True):
        self.path = Path(state_dir) / "counters.json"
        self.persist = persist  # False: a look that leaves the baseline to the running agent
        self.boot_id = boot_id if boot_id is not None else current_boot_id()
        stored = read_json(self.path)
        self.previous: Dict[str, Dict[str, int]] = {}
        if isinstance(stored, dict) and isinstance(stored.get("interfaces"), dict):
            if stored.get("boot_id") == self.boot_id:
                self.previous = {
                    name: values for name, values in stored["interfaces"].items() if isinstance(values, dict)
                }
            else:
                log.info("kernel rebooted since the last report: network deltas restart from zero")

    def update(self, counters: Mapping[str, object]) -> Dict[str, int]:
        """Deltas summed over `counters` (name -> InterfaceCounters-like); persists the new baseline."""
        totals = dict.fromkeys(KEYS, 0)
        current: Dict[str, Dict[str, int]] = {}
        for name, sample in counters.items():
            now = {key: int(getattr(sample, key)) for key in KEYS}
            current[name] = now
            before = self.previous.get(name)
            if before is None:
                continue
            if any(now[key] < int(before.get(key, 0)) for key in KEYS):
                log.info("counters of %s went backwards (reset or wrap): it contributes 0 this round", name)
                continue
            for key in KEYS:
                totals[key] += now[key] - int(before.get(key, 0))
        self.previous = current
        if self.persist:
            try_write_json(self.path, {"boot_id": self.boot_id, "interfaces": current})  # else kept in memory
        return totals
