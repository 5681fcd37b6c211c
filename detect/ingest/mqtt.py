"""The front door on an MQTT broker: `MqttIngest` runs an `Ingestor` on a persistent session."""

import logging
import queue
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

from garrison.agent.transports.paho_compat import new_client, parse_broker_url, redact_broker_url
from garrison.detect.ingest.deadletter import MAX_ATTEMPTS, DeadLetters, InFlight, digest
from garrison.detect.ingest.frontdoor import Ingestor, Retry, _RateLimitedLog, parse_topic
from garrison.wire.topics import ENGINE_SUBSCRIPTIONS

log = logging.getLogger("garrison.ingest")

# Reports per transaction. Small on purpose: the broker sends at most max_inflight_messages
# (Mosquitto: 20 by default, 100 as broker-config writes it) reports not yet acknowledged, and a
# batch is acknowledged only once committed; a batch the size of that window leaves the broker
# idle while it is judged (measured in docs/bench-burst.md: 100 gave about half the rate of 20).
_BATCH_SIZE = 20


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class MqttIngest:
    """Run an Ingestor on an MQTT broker.

    A persistent session (clean_session=False, fixed client id) so the broker queues QoS 1
    reports while the engine is down. Messages pass from paho's network thread to one worker
    through a bounded queue; when it is full the network thread waits (TCP backpressure), so
    memory never grows without bound. Where paho supports it (2.x) a report is acknowledged
    only after it was handled, so an engine crash loses nothing the broker still holds.
    now_ms: the clock that dates arrivals (epoch ms); `serve` passes the engine's, so
    `--clock-offset` shifts report times too.

    Group commit: the worker takes what is queued (up to `batch_size`; when it is behind,
    waiting at most `linger_s` for more) and hands it to
    `Ingestor.handle_batch`, one store transaction; replies are published and messages
    acknowledged only after the commit. A message that was not durably handled (Retry) is not
    acknowledged: a busy store (another process's write lock) makes the batch wait and try again
    (new messages wait behind it, in order); a message whose handling raises is tried again on
    its own and, after `max_attempts`, set aside in `dead_letters` (a DeadLetters or its directory), answered
    InternalError and acknowledged. `in_flight` (a file path) lets a restarted engine recognise
    a message that was being handled when the process died (deadletter.InFlight).
    """

    def __init__(
        self,
        broker_url: str,
        ingestor: Ingestor,
        client_id: str = "garrison-detect",
        tls: Optional[Tuple[Optional[str], Optional[str], Optional[str]]] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        queue_size: int = 100,
        reconnect_delay: Tuple[int, int] = (1, 60),
        keepalive: int = 60,
        now_ms: Callable[[], int] = _wall_clock_ms,
        batch_size: int = _BATCH_SIZE,
        dead_letters: Union[str, DeadLetters, None] = None,
        in_flight: Optional[str] = None,
        max_attempts: int = MAX_ATTEMPTS,
        linger_s: float = 0.005,
    ):
        host, port, url_tls, url_user, url_password = parse_broker_url(broker_url)
        self.url, self.host, self.port = redact_broker_url(broker_url), host, port  # self.url is for logs
        self.ingestor = ingestor
        self.now_ms = now_ms
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.replies_sent = 0
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._behind = False
        self.max_attempts = max_attempts
        self.dead_letters = DeadLetters(dead_letters) if isinstance(dead_letters, str) else dead_letters
        self.in_flight = InFlight(in_flight) if in_flight else None
        self._retry_delay = _RETRY_MIN_S
        # bounded in messages; at 128 KB each the default holds at most ~13 MB
        self._queue: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self._log_behind = _RateLimitedLog(every_s=30)
        self._stopping = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._client = new_client(client_id, clean_session=False)
        self._manual_ack = hasattr(self._client, "manual_ack_set")
        if self._manual_ack:
            self._client.manual_ack_set(True)
        if tls or url_tls:
            ca, cert, key = tls if tls else (None, None, None)
            self._client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        if username or url_user:
            self._client.username_pw_set(username or url_user, password or url_password)
        self._client.reconnect_delay_set(*reconnect_delay)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._subscription: Optional[int] = None
        self._topics: Tuple[str, ...] = ()
        # topic -> handler(payload), called on paho's thread (broker control)
        self.side_channels: Dict[str, Callable[[bytes], None]] = {}

    # paho callbacks: signatures differ between paho 1.6 and 2.x, hence *rest.
    def _on_connect(self, client, userdata, flags, rc, *rest):
        if getattr(rc, "is_failure", rc != 0):
            log.error("broker %s refused the connection: %s", self.url, rc)
            return
        topics = ENGINE_SUBSCRIPTIONS + tuple(self.side_channels)
        _, self._subscription = client.subscribe([(topic, 1) for topic in topics])
        self._topics = topics
        log.info("connected to %s; subscribing", self.url)

    def _on_subscribe(self, client, userdata, mid, granted, *rest):
        """`connected` means subscribed: a report published once the engine says it is serving
        is one the broker delivers to it (set on the SUBACK, not on the CONNACK)."""
        if mid != self._subscription:
            return
        for topic, code in zip(self._topics, granted):
            if getattr(code, "is_failure", code == 0x80):  # paho 2.x reason codes, 1.6 granted QoS
                log.error("broker %s refused the subscription to %s (check its ACL for the engine)", self.url, topic)
        log.info("subscribed on %s; listening for Device Defender reports", self.url)
        self.connected.set()

    def _on_disconnect(self, client, userdata, *rest):
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("lost the broker %s; reconnecting", self.url)

    def _on_message(self, client, userdata, msg):
        side = self.side_channels.get(msg.topic) if self.side_channels else None
        if side is not None:  # not a report: never queued behind them (the worker may wait on it)
            side(msg.payload)
            if self._manual_ack and msg.qos > 0:  # else it holds one of the broker's in-flight slots
                client.ack(msg.mid, msg.qos)
            return
        try:
            self._queue.put_nowait(msg)
            return
        except queue.Full:
            self._log_behind(
                logging.WARNING,
                "behind",
                "the engine is behind: %d reports queued; holding the broker back until it catches up",
                self._queue.maxsize,
            )
        while not self._stopping.is_set():
            try:
                self._queue.put(msg, timeout=0.5)  # waits while the worker is behind
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        waiting: List[_Message] = []  # not durably handled yet: handled again before anything new
        while True:
            if waiting:
                if self._stopping.wait(self._retry_delay):
                    # unacknowledged: the broker delivers them again to the next session
                    log.warning("stopping with %d reports not yet stored; the broker keeps them", len(waiting))
                    return
                # a busy store: the whole batch again; a report whose handling raised: alone
                batches = [waiting] if waiting[0].transient else [[m] for m in waiting]
            else:
                if self._stopping.is_set() and self._queue.empty():
                    return
                batches = self._take()
            waiting = []
            for batch in batches:
                try:
                    waiting += self._handle(batch)
                except Exception as exc:  # the worker must outlive any one batch
                    log.exception("failed to handle %d messages", len(batch))
                    for message in batch:
                        message.attempts += 1
                        message.transient = False
                        if not self._give_up(message, f"{type(exc).__name__}: {exc}"):
                            waiting.append(message)
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX_S) if waiting else _RETRY_MIN_S

    def _take(self) -> List[List["_Message"]]:
        """What is queued, up to batch_size (waiting briefly for the first), as batches: one for
        the lot, and one each for suspects of a crashed run (dead-lettered once they were in
        flight max_attempts times)."""
        try:
            msgs = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        # behind (the last batch was full): linger a moment for more, as the network thread
        # fills the queue while this one waits (it holds the GIL otherwise) and a bigger batch
        # shares one commit. Not otherwise: the broker sends at most its max_inflight_messages
        # unacknowledged reports, and waiting for more than that would only stall the stream.
        deadline = time.monotonic() + (self.linger_s if self._behind else 0.0)
        while len(msgs) < self.batch_size:
            try:
                msgs.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msgs.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        self._behind = len(msgs) >= self.batch_size
        batch = [_Message(m) for m in msgs]
        suspects = self.in_flight.suspects if self.in_flight is not None else {}
        if not suspects:
            return [batch]
        batches: List[List[_Message]] = [[]]
        for message in batch:  # in arrival order: a thing's older report before its newer ones
            if message.digest not in suspects:
                batches[-1].append(message)
                continue
            message.attempts = suspects[message.digest]
            if not self._give_up(message, "the engine process died while handling it"):
                batches += [[message], []]
        return [b for b in batches if b]

    def _handle(self, batch: List["_Message"]) -> List["_Message"]:
        """Handle a batch; publish and acknowledge what is final; return what must wait."""
        if self.in_flight is not None:
            self.in_flight.begin(m.digest for m in batch)
        now = self.now_ms()
        outcomes = self.ingestor.handle_batch([(m.topic, m.msg.payload, now) for m in batch])
        waiting = []
        for message, outcome in zip(batch, outcomes):
            if isinstance(outcome, Retry):
                message.transient = outcome.transient
                if not outcome.transient:
                    message.attempts += 1
                    if self._give_up(message, outcome.reason, outcome):
                        continue
                waiting.append(message)
                continue
            if outcome is not None:
                self._reply(outcome)
            self._ack(message)
            self._count_latency(message)
        stats = self.ingestor.stats  # read by /metrics (garrison.detect.console.prometheus)
        stats["batches"] += 1
        stats["batch_reports"] += len(batch)
        if self.in_flight is not None:
            self.in_flight.end()
            for message in batch:
                self.in_flight.cleared(message.digest)
        return waiting

    def _count_latency(self, message: "_Message") -> None:
        stats = self.ingestor.stats
        stats["latency_seconds_sum"] += time.monotonic() - message.received
        stats["latency_count"] += 1

    def _give_up(self, message: "_Message", reason: str, retry: Optional[Retry] = None) -> bool:
        """Dead-letter `message` once it failed max_attempts times: kept, answered, acknowledged."""
        if message.attempts < self.max_attempts:
            return False
        if self.dead_letters is not None:
            try:
                self.dead_letters.put(message.raw_topic, message.msg.payload, reason, message.attempts)
            except OSError as exc:
                log.error("cannot keep a dead letter in %s: %s", self.dead_letters.directory, exc)
        else:
            log.error("gave up on a message on %r after %d attempts: %s", message.topic, message.attempts, reason)
        parsed = parse_topic(message.topic)
        if parsed is not None:
            thing, fmt = (retry.thing, retry.fmt) if retry else parsed
            self._reply(
                self.ingestor.internal_error(
                    thing,
                    fmt,
                    retry.report_id if retry else None,
                    self.now_ms(),
                    f"The engine failed to handle this report {message.attempts} times and set it aside "
                    "for the operator",
                )
            )
        self._ack(message)
        if self.in_flight is not None:
            self.in_flight.cleared(message.digest)
        return True

    def _reply(self, reply) -> None:
        # QoS 0: a QoS 1 reply waits in paho's memory for a PUBACK that the network thread,
        # busy holding back a burst, reads late; replies then piled up by the thousand
        # (docs/bench-burst.md). The report itself is what must not be lost, and it is not.
        self._client.publish(reply.topic, reply.payload, qos=0)
        self.replies_sent += 1

    def _ack(self, message: "_Message") -> None:
        if self._manual_ack and message.msg.qos > 0:
            self._client.ack(message.msg.mid, message.msg.qos)

    def start(self) -> "MqttIngest":
        """Connect (retrying in the background until the broker answers) and start serving."""
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="garrison-ingest", daemon=True)
        self._worker.start()
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        """Publish on the engine's connection (alerts): one session per engine identity, since a
        broker that ties client ids to certificates lets one connection take over the other."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, timeout: float = 10.0, disconnect: bool = True) -> None:
        """Finish what is queued and stop the worker; then (unless told not to) disconnect."""
        self._stopping.set()
        if self._worker:
            self._worker.join(timeout)
        if disconnect:
            self.disconnect()

    def disconnect(self, timeout: float = 1.0) -> None:
        """Disconnect and stop paho's thread. Connected, the DISCONNECT goes out and the thread
        ends at once: wait at most `timeout` for that. Not connected, there is nothing to send
        and no wait: the thread is asleep between reconnect attempts (paho sleeps in 1 s steps)
        or inside a connect() to a broker that drops packets (paho's connect timeout), and
        SIGTERM must not wait for either (the thread is a daemon; it ends when it wakes)."""
        connected = self.connected.is_set()
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, name="garrison-ingest-stop", daemon=True)
        stopper.start()
        if connected:
            stopper.join(timeout)
        self.connected.clear()

    def run_forever(self) -> None:
        """Serve until Ctrl-C / SIGTERM (as KeyboardInterrupt) or stop() from another thread."""
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            self.stop()


_RETRY_MIN_S, _RETRY_MAX_S = 0.05, 2.0


class _Message:
    """A received message and how often handling it failed."""

    __slots__ = ("msg", "topic", "raw_topic", "digest", "attempts", "transient", "received")

    def __init__(self, msg):
        self.msg = msg
        self.received = time.monotonic()  # ingest latency: from arrival to the broker ack
        self.raw_topic = getattr(msg, "_topic", b"") or b""
        try:
            self.topic = msg.topic
        except UnicodeDecodeError:
            self.topic = None  # not UTF-8: not a topic we can answer on; the ingestor drops it
        self.digest = digest(self.raw_topic, msg.payload)
        self.attempts = 0
        self.transient = False
