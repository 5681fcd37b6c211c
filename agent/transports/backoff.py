"""The reconnect backoff every transport uses: exponential, capped, jittered.

Jitter (each wait drawn within +-20 % of the nominal delay) keeps a fleet that lost its broker
at the same moment from coming back at the same moment.
"""

import random
import threading
from typing import Optional


class Backoff:
    """Delays of `first`, 2x`first`, ... up to `cap` seconds; `reset()` after a good connection."""

    def __init__(
        self, first: float = 1.0, cap: float = 120.0, jitter: float = 0.2, rng: Optional[random.Random] = None
    ):
        if not 0 < first <= cap:
            raise ValueError(f"backoff: need 0 < first ({first}) <= cap ({cap})")
        self.first, self.cap, self.jitter = float(first), float(cap), jitter
        self._rng = rng or random.Random()
        self.delay = self.first  # the nominal delay of the next wait (what the logs say)

    def reset(self) -> None:
        self.delay = self.first

    def next_wait(self) -> float:
        """The jittered wait for this attempt; the nominal delay then doubles (up to the cap)."""
        wait = self.delay * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        self.delay = min(self.delay * 2, self.cap)
        return wait

    def wait(self, stopping: threading.Event) -> bool:
        """Sleep this attempt's wait, or less if `stopping` is set; True when stopping."""
        return stopping.wait(self.next_wait())
