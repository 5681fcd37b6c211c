"""The agent's main loop: collect, spool, publish, hear replies, repeat; systemd-aware.

Every report goes through the on-disk spool: it is written there before publishing and removed
once it has an answer that settles it (accepted, or a rejection resending cannot fix; see
agent.delivery), so nothing is lost to a dead link, an engine that failed to record it, or a
kill -9. Reports go one at a time, oldest first, each after the previous one's answer.
"""

import dataclasses
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from garrison.agent import delivery, interval, owners, report, sdnotify
from garrison.agent.collect import ReportCollector
from garrison.agent.config import Config, ConfigError
from garrison.agent.control import AgentControl
from garrison.agent.custom import CustomMetricReader
from garrison.wire import names, topics
from garrison.wire.replies import Reply
from garrison.agent.spool import Spool
from garrison.agent.statefile import ReportIds, private_dir, remove_stray_temp_files
from garrison.agent.transports.base import Transport
from garrison.agent.transports.paho_compat import redact_broker_url
from garrison.collectors.base import CollectorResult

log = logging.getLogger(__name__)
SPOOL_DROPPED_METRIC = "garrison:spool_dropped"
MAX_SLICE = 1.0  # seconds; the loop wakes this often to flush a backlog and feed the watchdog


def make_transport(config: Config) -> Transport:
    """The transport named in the configuration."""
    host, port, tls = config.broker_address
    if config.transport == "greengrass":
        from garrison.agent.transports.greengrass import GreengrassTransport

        return GreengrassTransport(config.thing, config.format)
    if config.transport == "awsiot":
        from garrison.agent.transports.awsiot import AwsIotTransport

        if config.cert is None or config.key is None:  # load() refuses this already
            raise ConfigError("transport awsiot needs an mqtts:// broker and --cert/--key")

        return AwsIotTransport(
            config.thing,
            config.format,
            endpoint=host,
            port=port,
            cert=config.cert,
            key=config.key,
            ca=config.ca,
            client_id=config.client_id,
            keepalive=config.keepalive,
        )
    from garrison.agent.transports.mqtt import MqttTransport

    return MqttTransport(
        config.thing,
        config.format,
        host,
        port,
        tls=tls,
        ca=config.ca,
        cert=config.cert,
        key=config.key,
        client_id=config.client_id,
        username=config.username,
        password=config.password,
        mqtt_version=config.mqtt_version,
        keepalive=config.keepalive,
    )


def warn_if_key_exposed(key_path: Optional[str]) -> None:
    """Say so when the private key is readable by others than its owner (it should be 0600)."""
    if not key_path:
        return
    try:
        mode = os.stat(key_path).st_mode & 0o777
    except OSError:
        return  # the transport reports a missing key with its own clear error
    if mode & 0o077:
        log.warning("private key %s is readable by others (mode %04o): chmod 600 it", key_path, mode)


class Daemon:
    """The agent. `persist_state=False` (for `garrison-agent collect`) reads the state directory
    but never writes into it, so a look at the next report does not steal the running agent's
    deltas or report id (it still creates the directory when it can, with the caller's owner)."""

    def __init__(
        self,
        config: Config,
        transport: Optional[Transport] = None,
        custom_metrics: Optional[Mapping[str, Callable[[], Any]]] = None,
        persist_state: bool = True,
    ):
        self.config = config
        self.state_dir = Path(config.state_dir)
        try:
            private_dir(self.state_dir, allow_symlink=True)  # 0700 whatever the umask
            if persist_state:  # writes cut short by a crash or a full disk; never a look's business
                remove_stray_temp_files(self.state_dir)
            if persist_state and not os.access(self.state_dir, os.W_OK | os.X_OK):
                raise PermissionError(13, "not writable")
        except OSError as exc:
            if persist_state:  # a look (collect) works without a usable state directory
                raise ConfigError(
                    f"state directory {str(self.state_dir)!r} is unusable: {exc.strerror or exc}"
                ) from None
        self.ids = ReportIds(self.state_dir, persist=persist_state)
        _, extension, fold = interval.plan(config)
        self.events = interval.make_events(config) if persist_state else None  # a look needs no history
        self.collector = ReportCollector(
            self.state_dir,
            config.enabled_collectors,
            config.socket_backend,
            config.interfaces,
            config.include_loopback,
            config.max_list_items,
            persist=persist_state,
            events=self.events,
            interval_extension=extension,
            fold_interval=fold,
            posture_checks=config.posture_checks,
            socket_owners=owners.enabled(config),
        )
        try:
            self.spool = (
                Spool(self.state_dir / "spool", config.spool_max_reports, config.spool_max_bytes, config.spool_max_age)
                if persist_state
                else None
            )
        except OSError as exc:  # e.g. STATE_DIR/spool is a symlink: refused, never followed
            raise ConfigError(f"spool directory {exc.filename!r} is unusable: {exc.strerror or exc}") from None
        self._transport = transport
        self.custom_metrics: Dict[str, Callable[[], Any]] = dict(custom_metrics or {})
        for name in self.custom_metrics:
            names.check_custom_metric_name(name)
        self._custom_reader = CustomMetricReader()
        self.topic = report.topic(config.thing, config.format)
        self.last_results: List[CollectorResult] = []
        self._stop = threading.Event()
        self._started = False
        self._replies: Dict[int, Reply] = {}
        self._awaiting: Optional[int] = None  # the report whose answer flush() waits for
        self._answers: Dict[int, Reply] = {}  # the last answer to each recent report (run --once)
        self._backoff = delivery.ResendBackoff()
        self._reply_cond = threading.Condition()
        self._watchdog = sdnotify.watchdog_interval()
        self.control = AgentControl(config, self.collector) if persist_state and config.control else None
        self._last_ping = 0.0

    def outbox(self) -> Spool:
        """The spool reports are sent from; a look (persist_state=False) has none."""
        if self.spool is None:
            raise RuntimeError("this agent only looks at reports (persist_state=False): it has no spool to send from")
        return self.spool

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = make_transport(self.config)
        return self._transport

    # -- one report ------------------------------------------------------------------------------

    def _custom_values(self) -> Dict[str, Any]:
        return self._custom_reader.read(self.custom_metrics)  # a bad value costs only its metric

    def build(self) -> Tuple[Dict[str, Any], List[CollectorResult]]:
        """A new report (long names) with a fresh id, and the collector results behind it."""
        custom = self._custom_values()
        dropped = self.spool.take_unreported_drops() if self.spool else 0
        if dropped:
            custom[SPOOL_DROPPED_METRIC] = dropped
        try:
            built, results = self.collector.collect(self.ids.next(), custom)
        except Exception:
            if self.spool:
                self.spool.give_back_drops(dropped)
            raise
        self.last_results = results
        return built, results

    def encode(self, built: Dict[str, Any]) -> bytes:
        return report.encode(built, self.config.format, self.config.short_names)

    def cycle(self, reply_timeout: Optional[float] = None) -> Optional[int]:
        """Collect a report, spool it, and send the spool; returns the report id (None if none built)."""
        try:
            built, _ = self.build()
            report_id = built["header"]["report_id"]
            self.outbox().add(report_id, self.config.format, self.encode(built))
        except Exception as exc:  # a broken cycle must not end the agent; the next one may work
            log.error("could not build a report this cycle: %s", exc)
            return None
        self.flush(reply_timeout)
        return report_id

    def flush(self, reply_timeout: Optional[float] = None) -> int:
        """Send spooled reports oldest first, each after the previous one was settled (accepted,
        or rejected for good); stop at one not acknowledged, answered InternalError or not
        answered in time (resent later, with backoff). Returns how many were settled."""
        reply_timeout = self.config.reply_timeout if reply_timeout is None else reply_timeout
        spool = self.outbox()
        spool.enforce_bounds()
        sent = 0
        for entry in spool.entries():
            if self._stop.is_set() or not self.transport.connected or not self._backoff.due(time.monotonic()):
                break
            payload = spool.read(entry)
            if payload is None:
                continue
            with self._reply_cond:
                reply = self._replies.pop(entry.report_id, None)  # a late answer to an earlier send
            if reply is None or not delivery.settles(reply):
                reply = self._send(entry, payload, reply_timeout)
                if reply is False:
                    break
            if not self._settle(entry, reply, reply_timeout):
                break
            sent += 1
            self._ping_watchdog()
        if sent > 1:
            log.info("sent %d spooled reports", sent)
        return sent

    def _send(self, entry, payload: bytes, reply_timeout: float):
        """Publish one report and wait for its answer: the Reply, None if none came, False if the
        broker did not take it."""
        with self._reply_cond:
            self._awaiting = entry.report_id
        try:
            topic = report.topic(self.config.thing, entry.fmt)
            if not self.transport.publish(topic, payload, self.config.publish_timeout):
                log.info(
                    "report %d not acknowledged; kept in the spool (%d waiting)", entry.report_id, len(self.outbox())
                )
                return False
            log.debug("report %d published (%d bytes)", entry.report_id, len(payload))
            self._ping_watchdog()
            if entry.fmt != self.config.format:  # left from another format: we do not hear its replies
                return Reply(self.config.thing, entry.report_id, True)
            return self.wait_reply(entry.report_id, reply_timeout)
        finally:
            with self._reply_cond:
                self._awaiting = None

    def _settle(self, entry, reply: Optional[Reply], reply_timeout: float) -> bool:
        """Act on a report's answer: True if it left the spool (the next one may go)."""
        if reply is not None:
            self._answers[entry.report_id] = reply
            while len(self._answers) > 100:
                self._answers.pop(next(iter(self._answers)))
        if reply is None and self._stop.is_set():
            return False  # stopping: it stays spooled, nothing to say
        if reply is not None and delivery.settles(reply):
            self.outbox().remove(entry)
            self._backoff.reset()
            if reply.accepted:
                log.info("report %s accepted by %s", entry.report_id, reply.thing)
            else:
                log.warning(
                    "report %s rejected: %s: %s; dropped (resending cannot change that)",
                    entry.report_id,
                    reply.error_code,
                    reply.error_message,
                )
            return True
        delay = self._backoff.failed(time.monotonic())
        why = (
            f"no reply within {reply_timeout:g} s"
            if reply is None
            else f"rejected: {reply.error_code}: {reply.error_message}"
        )
        log.warning(
            "report %s %s; kept in the spool and sent again in %.0f s (%d waiting)",
            entry.report_id,
            why,
            delay,
            len(self.outbox()),
        )
        return False

    # -- replies ---------------------------------------------------------------------------------

    def _on_reply(self, reply: Reply) -> None:
        log.debug(
            "reply for report %s (%s)",
            reply.report_id,  # flush() logs what it does with it
            "accepted" if reply.accepted else reply.error_code,
        )
        with self._reply_cond:
            if reply.report_id is None and self._awaiting is not None:
                # a rejection before the id could be read (PayloadTooLarge, InvalidThingName):
                # one report is in flight at a time, so it is that one's
                reply = dataclasses.replace(reply, report_id=self._awaiting)
            if reply.report_id is not None:
                self._replies[reply.report_id] = reply
                while len(self._replies) > 100:
                    self._replies.pop(next(iter(self._replies)))
            self._reply_cond.notify_all()

    def wait_reply(self, report_id: int, timeout: float) -> Optional[Reply]:
        deadline = time.monotonic() + timeout
        with self._reply_cond:
            while report_id not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._reply_cond.wait(min(remaining, 0.25))  # short: a stop is seen at once
                self._ping_watchdog()
            return self._replies.pop(report_id)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            warn_if_key_exposed(self.config.key)
            if self.control is not None:
                self.transport.side_channels[topics.control_topic(self.config.thing)] = self.control.on_message
            self.transport.start(self._on_reply)
            self._started = True

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler); `close()` releases the connection.

        Waits under way (connecting, a PUBACK, a reply) end now, so SIGTERM stops the agent
        within about a second even while the broker is unreachable."""
        self._stop.set()
        if self._transport is not None and hasattr(self._transport, "cancel_waits"):
            self._transport.cancel_waits()

    def close(self) -> None:
        if self.events is not None:
            self.events.stop()
        if self._started:
            self.transport.stop()
            self._started = False

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _ping_watchdog(self) -> None:
        if self._watchdog and time.monotonic() - self._last_ping >= min(MAX_SLICE, self._watchdog / 4):
            sdnotify.notify("WATCHDOG=1")
            self._last_ping = time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep until `seconds` pass or stop; feed the watchdog and send a backlog once the link returns."""
        step = MAX_SLICE if not self._watchdog else min(MAX_SLICE, self._watchdog / 2)
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(step, remaining))
            self._ping_watchdog()
            if self.control is not None and self.control.report_now_due():
                return
            if self.transport.connected and self.outbox().entries():
                self._guarded(self.flush)

    @staticmethod
    def _guarded(step: Callable[[], Any]) -> None:
        """Run one step of the loop; whatever goes wrong is logged and the agent carries on."""
        try:
            step()
        except Exception:
            log.exception("unexpected error in the agent loop; continuing")

    def next_interval(self) -> float:
        spread = self.config.jitter
        interval = (self.control.interval(self.config.interval) if self.control else None) or self.config.interval
        return interval * random.uniform(1 - spread, 1 + spread)

    def run_forever(self) -> None:
        """Report every interval until stop(); tells systemd READY, WATCHDOG and STOPPING."""
        self.start()
        sdnotify.notify("READY=1")
        log.info(
            "agent started: thing %s, broker %s, every %.0f s, %s%s",
            self.config.thing,
            redact_broker_url(self.config.broker),
            self.config.interval,
            self.config.format,
            " (short names)" if self.config.short_names else "",
        )
        # a moment for the first connection, so the first report goes out at once rather than spooled
        self.transport.wait_connected(min(5.0, self.config.publish_timeout))
        try:
            while not self._stop.is_set():
                self._guarded(self.cycle)
                self._ping_watchdog()
                self.sleep(self.next_interval())
        finally:
            sdnotify.notify("STOPPING=1")
            log.info("agent stopping (%d report(s) waiting in the spool)", len(self.outbox()))
            self.close()

    def publish_once(self, timeout: Optional[float] = None) -> Tuple[Optional[int], Optional[Reply]]:
        """One report: collect, publish (after any backlog), wait for its reply.

        (report id, reply); reply is None if unreachable or unanswered within `timeout`.
        """
        timeout = self.config.reply_timeout if timeout is None else timeout
        self.start()
        if not self.transport.wait_connected(timeout):
            log.warning("broker %s unreachable within %.0f s", redact_broker_url(self.config.broker), timeout)
        report_id = self.cycle(timeout)
        if report_id is None:
            return None, None
        # flush() sent it after the backlog and waited for its answer (None: not sent, or unanswered)
        return report_id, self._answers.get(report_id)
