"""paho clients for the reliability tests: TLS identities, message capture, connect outcomes."""
import os
import ssl
import threading
import time
from typing import List, Optional, Tuple

import paho.mqtt.client as mqtt

from garrison.agent.transports import paho_compat
from fixtures import wait_for  # noqa: F401 - the reliability tests take it from here

def new_client(client_id: str = "", clean_session: bool = True) -> mqtt.Client:
    return paho_compat.new_client(client_id or f"t-{os.getpid()}-{time.monotonic_ns()}", clean_session)


class Client:
    """A connected paho client that records what it receives; `.connected` / `.failure` tell how
    the connection went."""

    def __init__(self, host: str, port: int, ca: Optional[str] = None, cert: Optional[str] = None,
                 key: Optional[str] = None, client_id: str = "", clean_session: bool = True, on_message=None):
        self.messages: List[Tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.ended = threading.Event()        # refused or disconnected
        self.failure: Optional[str] = None
        self.suback: List[int] = []
        self.handler = on_message             # optional (client, topic, payload) callback
        self.client = new_client(client_id, clean_session)
        if ca:
            context = ssl.create_default_context(cafile=ca)
            if cert:
                context.load_cert_chain(cert, key)
            self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        try:
            self.client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:  # the TLS handshake refused us
            self.failure = f"{type(exc).__name__}: {exc}"
            self.ended.set()
            return
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, rc, *rest):
        if getattr(rc, "is_failure", rc != 0):
            self.failure = f"CONNACK {rc}"
            self.ended.set()
        else:
            self.connected.set()

    def _on_disconnect(self, client, userdata, *rest):
        self.failure = self.failure or "disconnected"
        self.connected.clear()
        self.ended.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))
        if self.handler is not None:
            self.handler(self, msg.topic, msg.payload)

    def _on_subscribe(self, client, userdata, mid, granted, *rest):
        codes = [int(getattr(g, "value", g)) for g in granted]
        with self.lock:
            self.suback.extend(codes)

    def wait_connected(self, timeout: float = 20.0) -> "Client":
        wait_for(lambda: self.connected.is_set() or self.ended.is_set(), timeout, "the broker's answer")
        assert self.connected.is_set(), f"connection refused: {self.failure}"
        return self

    def refused(self, timeout: float = 20.0) -> bool:
        """True once the broker has refused or dropped us without a working session."""
        wait_for(lambda: self.ended.is_set() or self.connected.is_set(), timeout, "the broker's answer")
        if self.connected.is_set():  # TLS 1.3: the client certificate is judged after the handshake
            wait_for(lambda: self.ended.is_set(), timeout, "the broker to drop the connection")
        return self.ended.is_set()

    def subscribe(self, *topics: str) -> List[int]:
        """Subscribe (QoS 1); the SUBACK codes (0x80 = refused)."""
        with self.lock:
            before = len(self.suback)
        self.client.subscribe([(topic, 1) for topic in topics])
        wait_for(lambda: len(self.suback) >= before + len(topics), 20, "SUBACK")
        with self.lock:
            return self.suback[before:]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(20)

    def received(self, topic: Optional[str] = None) -> List[Tuple[str, bytes]]:
        with self.lock:
            return [m for m in self.messages if topic is None or m[0] == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
