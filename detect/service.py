"""What `garrison-detect serve` runs: the engine wired to its broker, store, alerts, API and timers.

`Service(settings).run()` opens the store (and a lock on it: one `serve` per database), builds
the engine facade, applies the config's profiles, connects the MQTT ingest, sends alerts and
carries out responses (the action runner) over that same connection (one MQTT session per
engine identity), serves the HTTP API (and the console, /metrics) when
configured, and then ticks the engine's periodic work and the scheduled audits every half second
until SIGTERM/SIGINT (or `stop()`). Stopping answers what is queued, flushes the alert outbox,
then disconnects. Everything that can be wrong with the settings fails in `start()`, as a
`ServiceError` with one line for the operator, before any thread or connection starts.
"""

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from garrison.detect import config as configuration
from garrison.detect.config import Config

log = logging.getLogger("garrison.detect")

TICK_S = 0.5  # periodic work (sweep, fleet thresholds, scheduled audits) is looked at this often
CONNECT_WAIT_S = 10  # how long start() waits for the broker before saying it retries in the background
ALERT_FLUSH_S = 5.0  # on stop, how long queued alerts get to leave


class ServiceError(Exception):
    """The service cannot start as configured (one line for the operator)."""


@dataclass
class BrokerLink:
    """Where and how the ingest connects: the URL, credentials, and (ca, cert, key) for TLS or None."""

    url: str
    username: Optional[str] = None
    password: Optional[str] = None
    tls: Optional[Tuple[Optional[str], Optional[str], Optional[str]]] = None


class Service:
    def __init__(
        self,
        db: str,
        broker: BrokerLink,
        config: Optional[Config] = None,
        clock_offset_s: Optional[float] = None,
        broker_control: bool = False,
        broker_log: Optional[str] = None,
    ):
        self.db = db
        self.broker = broker
        self.config = config or Config()
        self.clock_offset_s = clock_offset_s
        self.broker_control = broker_control
        self.broker_log = broker_log or self.config.broker_log  # the cloud-side metrics' source
        self.follower: Any = None
        self._busy_logged = 0.0
        self.engine: Any = None  # the Engine, once start() built it
        self.ingest: Any = None
        self.runner: Any = None
        self.audits: Any = None
        self.api: Any = None
        self._stop = threading.Event()
        self._opened: list = []  # what stop() closes, in reverse order

    def start(self) -> "Service":
        from garrison.detect.audit.schedule import Scheduler
        from garrison.detect.clock import from_environment
        from garrison.detect.engine import Engine
        from garrison.detect.ingest.frontdoor import Ingestor
        from garrison.detect.ingest.mqtt import MqttIngest
        from garrison.detect.respond.alerts import AlertDispatcher, targets_from_config
        from garrison.detect.cli.cloud import start_broker_view
        from garrison.detect.cli.profiles_code import sync_configured
        from garrison.detect.engine import SERVE_BUSY_TIMEOUT_MS
        from garrison.detect.state.checkpoint import BACKSTOP_PAGES, WalCheckpointer
        from garrison.detect.state.store import Store, is_postgres

        config = self.config
        store = Store(self.db, busy_timeout_ms=SERVE_BUSY_TIMEOUT_MS)  # ingest must not wait on a CLI write
        self._opened.append(store.close)
        try:
            lock = _lock_database(self.db)
            if lock is not None:
                self._opened.append(lock.close)
            if not is_postgres(self.db):  # the ingest worker's commits no longer copy the log back
                store.wal_autocheckpoint(BACKSTOP_PAGES)
                self._opened.append(WalCheckpointer(self.db).start().stop)
            clock = from_environment(self.clock_offset_s)
            self.engine = engine = Engine(store, clock, config)
            self.follower = start_broker_view(engine, self.broker_log)
            if self.follower:
                self._opened.append(self.follower.stop)  # stopped before the store closes
            sync_configured(engine, config.profiles)  # the `profiles sync` path, never detaching
            self.ingest = MqttIngest(
                self.broker.url,
                Ingestor(engine, min_interval_s=config.min_report_interval_s, strict=config.strict),
                client_id=config.client_id,
                tls=self.broker.tls,
                username=self.broker.username,
                password=self.broker.password,
                now_ms=engine.clock.now_ms,
                dead_letters=_dead_letters(self.db, config),
                in_flight=_in_flight(self.db, config),
            )
            from garrison.detect.console.prometheus import watch_ingest

            watch_ingest(engine, self.ingest.ingestor, self.ingest)  # GET /metrics reads its counters and queue
            alert_conf = config.alerts if config.alerts is not None else {"log": True, "mqtt": True}
            # alerts leave over the ingest connection: one MQTT session per engine identity
            engine.alerts = AlertDispatcher(targets_from_config(alert_conf, mqtt_publish=self.ingest))
            self.runner = _start_runner(engine, store, self.ingest, self.broker_control)
            ingest = self.ingest
            engine.alert_target_builder = lambda conf: AlertDispatcher(targets_from_config(conf, mqtt_publish=ingest))
            engine.metric_exporter = lambda topic, payload: ingest.publish(topic, payload, qos=1)  # exportMetric
            self.api = _start_api(engine, config, self.db)
            self.audits = Scheduler(engine)  # scheduled audits (garrison-detect audit schedule create)
        except BaseException:
            self._close_opened()
            raise
        if clock.offset_s:
            log.warning(
                "simulation: the engine's clock runs %+g s from the wall clock (--clock-offset / "
                "$GARRISON_CLOCK_OFFSET); never set this in production",
                clock.offset_s,
            )
        self.ingest.start()
        self.runner.start()
        deadline = time.monotonic() + CONNECT_WAIT_S
        while not (self.ingest.connected.wait(0.25) or self._stop.is_set() or time.monotonic() > deadline):
            pass  # a SIGTERM in this first wait must not wait it out
        if not self.ingest.connected.is_set() and not self._stop.is_set():
            log.warning("broker %s not reachable yet; retrying in the background", self._broker_shown())
        log.info(
            "serving: broker %s, database %s, min report interval %gs, invalidation after %gs%s%s",
            self._broker_shown(),
            self.db,
            config.min_report_interval_s,
            config.invalidation_period_s,
            ", strict" if config.strict else "",
            f", API {self.api.url}" if self.api else "",
        )
        return self

    def run(self, handle_signals: bool = True) -> None:
        """start(), tick until SIGTERM/SIGINT (or stop()), then shut down in order."""
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        self.start()
        try:
            while not self._stop.wait(TICK_S):
                self.tick()
        finally:
            self.shutdown()

    def tick(self) -> None:
        from garrison.detect.state.store import StoreBusy

        try:
            self.engine.tick()
            self.audits.tick()
        except StoreBusy as exc:  # another process writes for long: nothing lost, try again
            if time.monotonic() - self._busy_logged >= 60:  # at most one line a minute
                log.warning("periodic work waits: %s", exc)
                self._busy_logged = time.monotonic()
        except Exception:  # periodic work must never stop the engine
            log.exception("periodic work failed; retrying on the next tick")

    def stop(self) -> None:
        """Ask run() to return (thread-safe)."""
        self._stop.set()

    def shutdown(self) -> None:
        log.info("stopping")
        self.ingest.stop(disconnect=False)  # answer what is queued; the connection stays for alerts
        self.runner.stop()
        if self.api:
            self.api.stop()
        self.engine.dispatch_alerts()
        self.engine.alerts.close(ALERT_FLUSH_S)
        self.ingest.disconnect()
        self._close_opened()

    def _close_opened(self) -> None:
        while self._opened:
            self._opened.pop()()

    def _broker_shown(self) -> str:
        from garrison.agent.transports.paho_compat import redact_broker_url

        return redact_broker_url(self.broker.url)


def _start_runner(engine, store, ingest, broker_control: bool):
    """The action runner, speaking over the ingest connection (one session per engine identity);
    broker actions only with --broker-control."""
    from garrison.detect.respond import brokercontrol
    from garrison.detect.respond.runner import ActionRunner

    control = None
    if broker_control:
        control = brokercontrol.BrokerControl(ingest)
        ingest.side_channels[brokercontrol.DYNSEC_RESPONSE_TOPIC] = control.on_response
    from garrison.detect.respond.revocation import Revocation

    engine.runner = ActionRunner(
        store,
        control,
        publish=ingest.publish,
        connected=ingest.connected.is_set,
        revocation=Revocation.from_config(engine.config.audit),
        now_ms=engine.clock.now_ms,
    )
    return engine.runner


def _dead_letters(db: str, config: Config) -> Any:
    """The bounded dead-letter directory: --dead-letters, else beside a SQLite file; None (a
    PostgreSQL engine without --dead-letters): what the engine gives up on is only logged."""
    from garrison.detect.ingest.deadletter import DeadLetters
    from garrison.detect.state.store import is_postgres

    directory = config.dead_letters_dir or (None if is_postgres(db) else f"{db}.dead-letters")
    if directory is None:
        return None
    return DeadLetters(directory, config.dead_letters_max_files, config.dead_letters_max_bytes)


def _in_flight(db: str, config: Config) -> Optional[str]:
    """Where the ingest notes the messages it is handling, so that a report that killed the
    process is recognised after the restart (deadletter.InFlight): beside a SQLite file; on
    PostgreSQL in the dead-letter directory (--dead-letters), else nowhere (said once)."""
    import os
    from garrison.detect.state.store import is_postgres

    if not is_postgres(db):
        return f"{db}.inflight"
    if not config.dead_letters_dir:
        log.warning(
            "no --dead-letters directory: a report that kills the engine process is delivered "
            "again after every restart, never set aside"
        )
        return None
    try:
        os.makedirs(config.dead_letters_dir, mode=0o700, exist_ok=True)
        os.chmod(config.dead_letters_dir, 0o700)  # as DeadLetters.put: reports are kept there
    except OSError as exc:
        raise ServiceError(f"cannot create the dead-letter directory {config.dead_letters_dir}: {exc}") from None
    return os.path.join(config.dead_letters_dir, ".inflight")  # not a dead letter (*.json)


def _lock_database(db: str):
    """Refuse a second `serve` on the same database: two engines would fight over one MQTT session."""
    import fcntl
    from garrison.detect.state.store import is_postgres

    if is_postgres(db):
        from garrison.detect.cli.scaleout import serve_lock

        return serve_lock(db)
    lock = open(f"{db}.serve-lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ServiceError(f"another garrison-detect serve is running on {db}") from None
    return lock  # held until the service shuts down (or the process exits)


def _start_api(engine, config: Config, db: str):
    """The HTTP API when configured; a token is generated into a 0600 file when none is given."""
    from garrison.detect.api.auth import load_or_create_token
    from garrison.detect.api.server import ApiServer

    if not config.api_enabled:
        return None
    token = config.api_token
    if not token:
        token_file = config.api_token_file or f"{db}.api-token"
        token, created = load_or_create_token(token_file)
        if created:
            log.warning("generated an API token in %s (mode 0600)", token_file)
    host, port = configuration.parse_bind(config.api_bind or configuration.DEFAULT_API_BIND)
    try:
        return ApiServer(engine, token, host, port).start()
    except OSError as exc:
        raise ServiceError(f"cannot serve the API on {host}:{port}: {exc.strerror or exc}") from None
