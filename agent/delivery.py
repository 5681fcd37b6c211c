"""When a spooled report may leave the spool: only once it has an answer that settles it.

The broker's PUBACK only says the broker took the report; the engine may still fail to record
it (it answers `InternalError`, "send it again later") or never answer. So a report stays in
the spool until:
- it is accepted, or
- it is rejected with a code that resending the same bytes cannot change: `InvalidPayload`,
  `PayloadTooLarge`, `InvalidThingName`, `StaleReportId`, `UnregisteredThing`, any code we do
  not know, and `Throttled` (see below); it is dropped and logged, or
- the spool's bounds (count, bytes, age) drop it.
`InternalError`, or no reply within `reply_timeout`, keeps it: it is resent later with
exponential backoff, and the reports behind it wait, so the engine still sees ids in order (a
newer accepted id would make the older one a `StaleReportId` for ever).

`Throttled` settles the report: the engine (like AWS) refuses a report that arrives too soon
after the thing's last accepted one, and resending it right away is refused again. Holding it
for a whole interval would hold up every newer report behind it, which are then throttled in
turn. The next report is sent at the normal interval; the throttled one is dropped and logged.
"""

import random
from typing import Optional

from garrison.wire.replies import INTERNAL_ERROR, Reply

RESEND_LATER = frozenset({INTERNAL_ERROR})  # the engine did not record it: same bytes again later
FIRST_RESEND_S = 2.0
MAX_RESEND_S = 300.0  # the default report interval


def settles(reply: Reply) -> bool:
    """True when this answer ends the report's time in the spool."""
    return reply.accepted or reply.error_code not in RESEND_LATER


class ResendBackoff:
    """Exponential backoff (with jitter) for the report at the head of the spool."""

    def __init__(self, first: float = FIRST_RESEND_S, most: float = MAX_RESEND_S):
        self.first, self.most = first, most
        self.attempts = 0
        self.next_at: Optional[float] = None  # monotonic time the head may be sent again

    def due(self, now: float) -> bool:
        return self.next_at is None or now >= self.next_at

    def failed(self, now: float) -> float:
        """The head was not settled: seconds until it is sent again."""
        delay = min(self.first * 2**self.attempts, self.most) * random.uniform(0.8, 1.2)
        self.attempts += 1
        self.next_at = now + delay
        return delay

    def reset(self) -> None:
        self.attempts, self.next_at = 0, None
