"""Reconfiguration requests from the engine, on the thing's control topic (garrison.wire.control).

The broker lets only the engine publish there and lets a device read only its own (broker-config's
ACL). Still, the agent treats every request as untrusted: it checks the wire contract, then its
own configured limits, refuses (and logs) anything outside them, and logs every change it makes.
Nothing here runs a command; the requests only move the reporting schedule and turn collectors
the operator listed in `control_collectors` off and on again.

- report-now: the next report goes out at once (at most one per `control_min_interval`).
- report-every S for T: reports every max(S, control_min_interval) seconds for at most
  `control_max_duration` seconds, then the configured interval again (a later request replaces
  an earlier one; it never outlives the process). report-default ends it now.
- collector NAME on/off: only names in `control_collectors` that were enabled at start.
"""

import json
import logging
import threading
import time
from typing import Any, Dict, Optional

from garrison.wire.control import MAX_REQUEST_BYTES, ControlRequestError, check_request

log = logging.getLogger("garrison.agent.control")


class AgentControl:
    """The agent's side of the control topic. `collectors`: the daemon's ReportCollector (its
    `collectors` dict is what runs); the daemon asks `interval(default)` and `report_now_due()`."""

    def __init__(self, config: Any, collectors: Any = None, clock=time.monotonic):
        self.min_interval = float(config.control_min_interval)
        self.max_duration = float(config.control_max_duration)
        self.allowed_collectors = set(config.control_collectors)
        self.collectors = collectors
        self.clock = clock
        self._parked: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._every: Optional[float] = None
        self._until = 0.0
        self._now = threading.Event()
        self._last_now = -1e18

    # called on the transport's network thread, with the raw payload
    def on_message(self, payload: bytes) -> None:
        try:
            if len(payload) > MAX_REQUEST_BYTES:
                raise ControlRequestError(f"request of {len(payload)} bytes (at most {MAX_REQUEST_BYTES})")
            try:
                doc = json.loads(payload)
            except ValueError:
                raise ControlRequestError("not JSON") from None
            request = check_request(doc)
            self.apply(request)
        except ControlRequestError as exc:
            log.warning("control request refused: %s", exc)
        except Exception:
            log.exception("control request failed")

    def apply(self, request: Dict[str, Any]) -> None:
        tag = f" ({request['id']})" if "id" in request else ""
        kind = request["request"]
        with self._lock:
            now = self.clock()
            if kind == "report-now":
                if now - self._last_now < self.min_interval:
                    raise ControlRequestError(f"report-now again within control_min_interval ({self.min_interval:g} s)")
                self._last_now = now
                self._now.set()
                log.warning("control%s: reporting now", tag)
            elif kind == "report-every":
                every = max(float(request["seconds"]), self.min_interval)
                lasting = min(float(request["for_seconds"]), self.max_duration)
                self._every, self._until = every, now + lasting
                self._now.set()  # the new schedule starts with a report
                log.warning(
                    "control%s: reporting every %g s for %g s (asked: every %s s for %s s)",
                    tag,
                    every,
                    lasting,
                    request["seconds"],
                    request["for_seconds"],
                )
            elif kind == "report-default":
                if self._every is not None:
                    log.warning("control%s: back to the configured interval", tag)
                self._every = None
            else:
                self._toggle(request["name"], request["enabled"], tag)

    def _toggle(self, name: str, enabled: bool, tag: str) -> None:
        if name not in self.allowed_collectors:
            raise ControlRequestError(f"collector {name!r} is not in control_collectors")
        running = self.collectors.collectors if self.collectors is not None else {}
        if enabled:
            if name in running:
                log.info("control%s: collector %s already on", tag, name)
            elif name in self._parked:
                running[name] = self._parked.pop(name)
                log.warning("control%s: collector %s turned on again", tag, name)
            else:
                raise ControlRequestError(f"collector {name!r} was not enabled at start")
        else:
            if name in running:
                self._parked[name] = running.pop(name)
                log.warning("control%s: collector %s turned off", tag, name)
            else:
                log.info("control%s: collector %s already off", tag, name)

    # ---- asked by the daemon's loop ------------------------------------------------------------

    def interval(self, default: float) -> Optional[float]:
        """The temporary interval while one is in force, else None (then `default` applies)."""
        with self._lock:
            if self._every is None:
                return None
            if self.clock() >= self._until:
                log.warning("control: temporary interval over; back to every %g s", default)
                self._every = None
                return None
            return self._every

    def report_now_due(self) -> bool:
        """True once per report-now (or new schedule); the daemon's sleep ends early."""
        if self._now.is_set():
            self._now.clear()
            return True
        return False

    def remaining(self) -> float:
        """Seconds the temporary interval still lasts (0 when none)."""
        with self._lock:
            return max(0.0, self._until - self.clock()) if self._every is not None else 0.0
