"""The engine's notion of "now", injectable so tests can move time.

Everything time-dependent in the engine (received times, the invalidation sweep, fleet
statistics windows) asks a clock instead of calling `time.time()`, so a test can run two days
of device silence in a second. `SystemClock(offset_s)` is wall time shifted by a fixed offset;
`garrison-detect serve --clock-offset SECONDS` (a simulation feature: see docs/detect.md,
"Simulating time") or the environment variable GARRISON_CLOCK_OFFSET set it. `ManualClock` only
moves when told to.
"""

import os
import threading
import time
from typing import Optional

CLOCK_OFFSET_ENV = "GARRISON_CLOCK_OFFSET"


class SystemClock:
    """Wall-clock time plus a fixed offset in seconds."""

    def __init__(self, offset_s: float = 0.0):
        self.offset_s = float(offset_s)

    def now(self) -> float:
        """Epoch seconds."""
        return time.time() + self.offset_s

    def now_ms(self) -> int:
        """Epoch milliseconds."""
        return int(self.now() * 1000)


class ManualClock:
    """A clock that stands still until `advance()` or `set()` moves it (thread-safe)."""

    def __init__(self, start_s: float = 1_700_000_000.0):
        self._now = float(start_s)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def set(self, epoch_s: float) -> None:
        with self._lock:
            self._now = float(epoch_s)


def from_environment(offset_s: Optional[float] = None) -> SystemClock:
    """The clock `serve` uses: an explicit offset wins over GARRISON_CLOCK_OFFSET."""
    if offset_s is None:
        raw = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
        try:
            offset_s = float(raw) if raw else 0.0
        except ValueError:
            raise ValueError(f"{CLOCK_OFFSET_ENV} must be a number of seconds, got {raw!r}") from None
    return SystemClock(offset_s)
