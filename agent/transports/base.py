"""The Transport interface: how a report leaves the device and how replies come back.

A transport carries opaque payloads to topics and hands back Device Defender replies. The
daemon never knows which one it talks to (paho-mqtt, AWS IoT SDK, Greengrass IPC).

Contract:
- `start(on_reply)`: begin connecting (may return before connected); subscribe to the reply
  topics of `thing` in `fmt` (see garrison.wire.replies.reply_topics); call `on_reply(Reply)` from any
  thread for each reply. Reconnects on its own, with backoff, until `stop()`.
- `publish(topic, payload, timeout) -> bool`: True only once the broker acknowledged the
  message (QoS 1 PUBACK). False on timeout or when not connected; never raises for network
  trouble (the caller spools the report and retries later).
- `connected`: True while a session is up.
- `wait_connected(timeout) -> bool`: block until connected or timeout.
- `stop()`: disconnect cleanly and release threads; idempotent; returns within about a second
  (a connection attempt still under way is left to its daemon thread).
- `cancel_waits()`: end any publish or wait_connected under way now (they return False); safe
  from a signal handler. The daemon calls it on SIGTERM so that stopping never waits out a
  timeout against an unreachable broker.
"""

import threading
import time
from typing import Callable, Optional

from garrison.wire.replies import Reply

ReplyHandler = Callable[[Reply], None]
WAIT_SLICE = 0.25  # seconds; waits wake this often to notice cancel_waits()


class TransportError(Exception):
    """A transport that cannot be set up (bad configuration, missing extra)."""


class Transport:
    """Base class with the connected flag and safe reply delivery; subclasses implement
    `start`, `publish` and `stop`."""

    name = "transport"

    def __init__(self, thing: str, fmt: str = "json"):
        self.thing = thing
        self.fmt = fmt
        self._connected = threading.Event()
        self._cancelled = threading.Event()
        self.on_reply: Optional[ReplyHandler] = None
        self.side_channels: dict = {}  # topic -> handler(payload): the control topic (MQTT transport)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._connected.is_set() and not self._cancelled.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._connected.wait(min(remaining, WAIT_SLICE))
        return self._connected.is_set()

    def cancel_waits(self) -> None:
        self._cancelled.set()

    def start(self, on_reply: ReplyHandler) -> None:
        raise NotImplementedError

    def publish(self, topic: str, payload: bytes, timeout: float) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _deliver(self, reply: Optional[Reply]) -> None:
        """Hand a parsed reply to the daemon; a broken handler must not kill the network thread."""
        if reply is not None and self.on_reply is not None:
            try:
                self.on_reply(reply)
            except Exception:  # pragma: no cover - logged by the handler's owner
                import logging

                logging.getLogger(__name__).exception("reply handler failed")
