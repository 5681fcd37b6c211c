"""The front door on an MQTT broker: `MqttIngest` runs an `Ingestor` on a persistent session."""
import logging
import queue
import threading
import time
from typing import Callable, Optional, Tuple

from garrison.agent.transports.paho_compat import new_client, parse_broker_url, redact_broker_url
from garrison.detect.ingest.frontdoor import Ingestor, _RateLimitedLog
from garrison.wire.topics import ENGINE_SUBSCRIPTIONS

log = logging.getLogger("garrison.ingest")


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
    """

    def __init__(self, broker_url: str, ingestor: Ingestor, client_id: str = "garrison-detect",
                 tls: Optional[Tuple[str, str, str]] = None, username: Optional[str] = None,
                 password: Optional[str] = None, queue_size: int = 100,
                 reconnect_delay: Tuple[int, int] = (1, 60), keepalive: int = 60,
                 now_ms: Callable[[], int] = _wall_clock_ms):
        host, port, url_tls, url_user, url_password = parse_broker_url(broker_url)
        self.url, self.host, self.port = redact_broker_url(broker_url), host, port  # self.url is for logs
        self.ingestor = ingestor
        self.now_ms = now_ms
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.replies_sent = 0
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
        self.side_channels = {}   # topic -> handler(payload), called on paho's thread (broker control)

    # paho callbacks: signatures differ between paho 1.6 and 2.x, hence *rest.
    def _on_connect(self, client, userdata, flags, rc, *rest):
        if getattr(rc, "is_failure", rc != 0):
            log.error("broker %s refused the connection: %s", self.url, rc)
            return
        client.subscribe([(topic, 1) for topic in ENGINE_SUBSCRIPTIONS + tuple(self.side_channels)])
        log.info("connected to %s; listening for Device Defender reports", self.url)
        self.connected.set()

    def _on_disconnect(self, client, userdata, *rest):
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("lost the broker %s; reconnecting", self.url)

    def _on_message(self, client, userdata, msg):
        side = self.side_channels.get(msg.topic) if self.side_channels else None
        if side is not None:   # not a report: never queued behind them (the worker may wait on it)
            side(msg.payload)
            return
        try:
            self._queue.put_nowait(msg)
            return
        except queue.Full:
            self._log_behind(logging.WARNING, "behind", "the engine is behind: %d reports queued; "
                             "holding the broker back until it catches up", self._queue.maxsize)
        while not self._stopping.is_set():
            try:
                self._queue.put(msg, timeout=0.5)  # waits while the worker is behind
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                msg = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._process(msg)
            except Exception:  # the worker must outlive any one message
                log.exception("failed to answer a message on %r", getattr(msg, "topic", "?"))

    def _process(self, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None  # not UTF-8: not a topic we can answer on; handle() drops it
        reply = self.ingestor.handle(topic, msg.payload, self.now_ms())
        if reply is not None:
            # QoS 0: a QoS 1 reply waits in paho's memory for a PUBACK that the network thread,
            # busy holding back a burst, reads late; replies then piled up by the thousand
            # (docs/bench-burst.md). The report itself is what must not be lost, and it is not.
            self._client.publish(reply.topic, reply.payload, qos=0)
            self.replies_sent += 1
        if self._manual_ack and msg.qos > 0:
            self._client.ack(msg.mid, msg.qos)

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
        """Disconnect and stop paho's thread, waiting at most `timeout` for it: a connect() to a
        broker that drops packets blocks it for paho's connect timeout, and SIGTERM must not
        wait for that (the thread is a daemon; it ends when the attempt returns)."""
        self._client.disconnect()
        stopper = threading.Thread(target=self._client.loop_stop, name="garrison-ingest-stop", daemon=True)
        stopper.start()
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
