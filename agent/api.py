"""Library API for firmware that embeds the agent.

    from garrison.agent.api import Agent

    agent = Agent(thing="pump-17", broker="mqtts://broker.local:8883", ca="ca.crt",
                  cert="pump-17.crt", key="pump-17.key", state_dir="/data/garrison")
    agent.add_custom_metric("pump_pressure_kpa", read_pressure)   # called at every report
    reply = agent.publish_once()              # or agent.run_forever() in a thread, or agent.tick()
    print(reply.describe() if reply else "no reply")
    agent.close()

Options are those of `garrison-agent run` (garrison.agent.config.OPTIONS) as keyword arguments; they win
over the optional TOML `config_file`. GARRISON_* variables are ignored unless you pass
`environ=os.environ`. Invalid options raise `garrison.agent.config.ConfigError` at construction.
"""

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from garrison.agent import config as cfg
from garrison.agent.daemon import Daemon
from garrison.wire import names
from garrison.wire.replies import Reply
from garrison.agent.transports.base import Transport
from garrison.collectors.base import CollectorResult


class Agent:
    def __init__(
        self,
        config_file: Optional[str] = None,
        transport: Optional[Transport] = None,
        environ: Optional[Dict[str, str]] = None,
        **options: Any,
    ):
        self.config = cfg.load(config_file, environ=environ if environ is not None else {}, **options)
        self._daemon = Daemon(self.config, transport=transport)
        self._next_due = 0.0
        self._thread: Optional[threading.Thread] = None

    @property
    def daemon(self) -> Daemon:
        return self._daemon

    def add_custom_metric(self, name: str, callback: Callable[[], Any]) -> None:
        """Report `callback()` as custom metric `name` (number, list of numbers or strings, or
        {"ip_list": [...]}); None skips it for that report.

        `name` must keep garrison.wire.names.CUSTOM_METRIC (1-128 characters of [a-zA-Z0-9:_-],
        not starting with "aws:"): otherwise InvalidName, a ValueError naming the rule, now rather
        than a rejected report later. Each value is checked when it is collected against the
        engine's rules; a bad one is left out of that report (logged once), the rest is sent."""
        names.check_custom_metric_name(name)
        if not callable(callback):
            raise TypeError(f"custom metric {name!r}: the callback must be callable, got {type(callback).__name__}")
        self._daemon.custom_metrics[name] = callback

    def remove_custom_metric(self, name: str) -> None:
        self._daemon.custom_metrics.pop(name, None)

    def collect(self) -> Dict[str, Any]:
        """One report as a long-name dict (not published); uses a report id and advances deltas."""
        built, _ = self._daemon.build()
        return built

    @property
    def last_results(self) -> List[CollectorResult]:
        """Each collector's name, duration, success and error from the last report."""
        return list(self._daemon.last_results)

    @property
    def spool_dropped(self) -> int:
        return self._daemon.outbox().dropped

    def publish_once(self, timeout: Optional[float] = None) -> Optional[Reply]:
        """Collect and publish one report; its accepted/rejected Reply, or None if none came in time."""
        _, reply = self._daemon.publish_once(timeout)
        return reply

    def start(self) -> None:
        """Begin connecting in the background (tick, publish_once and run_forever do it too)."""
        self._daemon.start()

    @property
    def connected(self) -> bool:
        return self._daemon.transport.connected

    def wait_connected(self, timeout: float) -> bool:
        self._daemon.start()
        return self._daemon.transport.wait_connected(timeout)

    def tick(self, now: Optional[float] = None) -> Optional[int]:
        """For the firmware's own main loop: publish a report when one is due (else send any
        backlog). Blocks at most for one publish and its reply (`reply_timeout`) per report sent;
        returns the report id when one was made."""
        self._daemon.start()
        now = time.monotonic() if now is None else now
        if now < self._next_due:
            if self._daemon.transport.connected and self._daemon.outbox().entries():
                self._daemon.flush()
            return None
        self._next_due = now + self._daemon.next_interval()
        return self._daemon.cycle()

    def run_forever(self) -> None:
        """Report every interval until stop() (blocks; run it in a thread if needed)."""
        self._daemon.run_forever()

    def start_background(self) -> threading.Thread:
        """run_forever in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="garrison-agent", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._daemon.stop()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def close(self) -> None:
        """Stop and disconnect; spooled reports stay on disk for the next start."""
        self.stop()
        self._daemon.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
