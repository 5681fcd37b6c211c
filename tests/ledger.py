"""A Sink in memory, in place of the engine, for tests and benchmarks of the front door."""
import threading
from typing import Dict, Tuple


class MemoryLedger:
    """Keeps accepted reports and last ids in memory; `registered` for strict mode."""

    def __init__(self, registered=None):
        self.registered = set(registered or ())
        self.last: Dict[str, Tuple[int, int]] = {}
        self.reports: Dict[str, list] = {}
        self._lock = threading.Lock()

    def last_report(self, thing):
        with self._lock:
            return self.last.get(thing)

    def is_registered(self, thing):
        return thing in self.registered

    def accept(self, thing, report_long, received_ms):
        with self._lock:
            self.last[thing] = (report_long["header"]["report_id"], received_ms)
            self.reports.setdefault(thing, []).append(report_long)


class PoisonedSink(MemoryLedger):
    """Handling reports of `poison` raises, as a bug tripped by one payload would."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def accept(self, thing, report_long, received_ms):
        if thing == "poison":
            self.calls += 1
            raise RuntimeError("a bug this report trips")
        super().accept(thing, report_long, received_ms)
