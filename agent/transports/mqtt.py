"""paho-mqtt transport: MQTT 3.1.1 or 5, plain or TLS / mutual TLS, QoS 1, reconnect with backoff.

Works with paho-mqtt 1.6 (Debian's python3-paho-mqtt) and 2.x. Each connection attempt uses a
fresh paho client: paho keeps unacknowledged QoS 1 messages in memory and would resend them on
reconnect, while ours already wait in the on-disk spool; a fresh client resends nothing, so the
spool alone decides what is sent, in order.
"""

import logging
import socket
import ssl
import threading
import time
from typing import Dict, Optional

import paho.mqtt.client as mqtt

from garrison.wire import replies, topics
from garrison.agent.transports.backoff import Backoff
from garrison.agent.transports.base import ReplyHandler, Transport, TransportError
from garrison.agent.transports.paho_compat import new_client

log = logging.getLogger(__name__)
STOP_JOIN_S = 1.0  # stop() waits this long for the network thread (a connect may block for longer)


def _code(value) -> int:
    """An int from a paho return/reason code (int in 1.6 v3.1.1, ReasonCode(s) objects otherwise)."""
    return int(getattr(value, "value", value))


class MqttTransport(Transport):
    name = "mqtt"

    def __init__(
        self,
        thing: str,
        fmt: str,
        host: str,
        port: int,
        tls: bool = False,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        client_id: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        mqtt_version: str = "3.1.1",
        keepalive: int = 60,
        backoff_min: float = 1.0,
        backoff_max: float = 120.0,
    ):
        super().__init__(thing, fmt)
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client_id = client_id or thing
        self.username, self.password = username, password
        self.protocol = mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.ssl_context = self._ssl_context(ca, cert, key) if tls else None
        self.reply_topics = topics.reply_topics(thing, fmt)
        self._client: Optional[mqtt.Client] = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._acks = threading.Condition()
        self._acked: Dict[int, bool] = {}  # mid -> accepted, for the current client
        self._generation = 0  # bumped per client, so stale acks are ignored
        self._subscribe_mid: Optional[int] = None
        self._refused = False  # the broker answered CONNACK with an error (logged)

    @staticmethod
    def _ssl_context(ca, cert, key) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=ca)
            if cert:
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot load TLS files: {exc}") from None
        return context

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, on_reply: ReplyHandler) -> None:
        self.on_reply = on_reply
        if self._thread is not None:  # a previous thread still in a connection attempt
            self._thread.join()
        self._stopping.clear()
        self._cancelled.clear()
        self._thread = threading.Thread(target=self._run, name="garrison-mqtt", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            # A connect() to a host that drops packets blocks for paho's connect timeout (5 s; the
            # keepalive on paho 1.6): don't make SIGTERM wait for it. The thread is a daemon and
            # ends on its own once the attempt returns (it sees _stopping).
            self._thread.join(STOP_JOIN_S)
            if not self._thread.is_alive():
                self._thread = None
            else:
                log.debug("a connection attempt to %s:%s is still under way; not waiting for it", self.host, self.port)
        self._connected.clear()

    def _new_client(self) -> mqtt.Client:
        client = new_client(self.client_id, clean_session=True, protocol=self.protocol)
        if self.ssl_context is not None:
            client.tls_set_context(self.ssl_context)
        if self.username:
            client.username_pw_set(self.username, self.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _run(self) -> None:
        """Connect, serve the network loop, and reconnect with jittered exponential backoff."""
        backoff = Backoff(self.backoff_min, self.backoff_max)
        while not self._stopping.is_set():
            client = self._new_client()
            with self._acks:
                self._generation += 1
                self._acked.clear()
            try:
                client.connect(self.host, self.port, self.keepalive)
            except (OSError, ssl.SSLError) as exc:
                log.warning(
                    "cannot reach broker %s:%s: %s; retrying in %.0f s", self.host, self.port, exc, backoff.delay
                )
                backoff.wait(self._stopping)
                continue
            self._client = client
            self._refused = False
            while not self._stopping.is_set():
                if client.loop(timeout=0.5) != mqtt.MQTT_ERR_SUCCESS:
                    break
            if self._connected.is_set():
                backoff.reset()  # the session was up: start the backoff afresh
            was_connected = self._connected.is_set()
            self._connected.clear()
            with self._acks:
                self._acks.notify_all()  # publishers waiting on this client give up now
            if self._stopping.is_set():
                try:
                    client.disconnect()
                    client.loop(timeout=0.2)
                except Exception:  # the broker may already be gone
                    pass
                break
            if was_connected:
                log.warning("lost connection to broker %s:%s; reconnecting", self.host, self.port)
            elif not self._refused:
                log.warning(
                    "broker %s:%s closed the connection before accepting it (client certificate "
                    "missing or refused, or not an MQTT broker?); retrying in %.0f s",
                    self.host,
                    self.port,
                    backoff.delay,
                )
            backoff.wait(self._stopping)
        self._client = None

    # -- callbacks (signatures differ between paho 1.6 and 2.x: positional, with *rest) --------

    def _on_connect(self, client, userdata, flags, rc, *rest) -> None:
        if _code(rc) != 0:
            log.error("broker %s:%s refused the connection: %s", self.host, self.port, rc)
            self._refused = True
            client.disconnect()
            return
        log.info("connected to broker %s:%s as %s", self.host, self.port, self.client_id)
        try:  # each report waits for its reply before the next: don't let Nagle hold packets back
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass
        result, mid = client.subscribe([(topic, 1) for topic in (*self.reply_topics, *self.side_channels)])
        self._subscribe_mid = mid

    def _on_subscribe(self, client, userdata, mid, granted, *rest) -> None:
        codes = [_code(code) for code in (granted if isinstance(granted, (list, tuple)) else [granted])]
        if any(code >= 0x80 for code in codes):
            log.warning("broker refused the subscription to the reply topics; replies will not be seen")
        self._connected.set()

    def _on_publish(self, client, userdata, mid, *rest) -> None:
        # MQTT 5 PUBACK carries a reason code; >= 0x80 means the broker did not take the message.
        ok = not rest or rest[0] is None or _code(rest[0]) < 0x80
        with self._acks:
            self._acked[mid] = ok
            self._acks.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        side = self.side_channels.get(message.topic)
        if side is not None:
            side(message.payload)
            return
        self._deliver(replies.parse(message.topic, message.payload))

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, timeout: float) -> bool:
        client = self._client
        if client is None or not self._connected.is_set() or self._cancelled.is_set():
            return False
        with self._acks:
            generation = self._generation
        try:
            info = client.publish(topic, payload, qos=1)
        except (ValueError, RuntimeError) as exc:
            log.warning("publish to %s failed: %s", topic, exc)
            return False
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        deadline = time.monotonic() + timeout
        with self._acks:
            while info.mid not in self._acked:
                if self._generation != generation or not self._connected.is_set() or self._cancelled.is_set():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._acks.wait(min(remaining, 0.5))
            else:
                ok = self._acked.pop(info.mid)
                if not ok:
                    log.warning("broker refused the report on %s", topic)
                return ok
        # No PUBACK in time on a live session: start a fresh one, so paho's in-memory copy is
        # not resent behind the spool's back (the spool resends it, in order).
        log.warning("no acknowledgement for a report within %.0f s; reconnecting", timeout)
        client.disconnect()
        return False
