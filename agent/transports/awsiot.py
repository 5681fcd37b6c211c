"""AWS IoT Core transport on the AWS IoT Device SDK v2 (awsiotsdk, the `aws` extra).

Mutual TLS with the thing's certificate; the SDK (awscrt) reconnects by itself with backoff.
awsiotsdk is imported only when this transport is built, so devices without the extra (armv7l
has no awscrt wheel) never pay for it. Note: awscrt may resend an unacknowledged QoS 1 publish
after a reconnect while the spool also retries it, so delivery is at least once.
"""

import logging
import threading
from typing import Optional

from garrison.wire import replies, topics
from garrison.agent.transports.backoff import Backoff
from garrison.agent.transports.base import ReplyHandler, Transport, TransportError

log = logging.getLogger(__name__)
MISSING_EXTRA = (
    "the awsiot transport needs the AWS IoT Device SDK: pip install 'garrison[aws]' (or pip install awsiotsdk)"
)


def _sdk():
    try:
        from awscrt import mqtt
        from awsiot import mqtt_connection_builder
    except ImportError:
        raise TransportError(MISSING_EXTRA) from None
    return mqtt, mqtt_connection_builder


class AwsIotTransport(Transport):
    name = "awsiot"

    def __init__(
        self,
        thing: str,
        fmt: str,
        endpoint: str,
        cert: str,
        key: str,
        port: int = 8883,
        ca: Optional[str] = None,
        client_id: Optional[str] = None,
        keepalive: int = 60,
    ):
        super().__init__(thing, fmt)
        self._mqtt, builder = _sdk()
        self.endpoint, self.port = endpoint, port
        self.reply_topics = topics.reply_topics(thing, fmt)
        self._connection = builder.mtls_from_path(
            endpoint=endpoint,
            port=port,
            cert_filepath=cert,
            pri_key_filepath=key,
            ca_filepath=ca,
            client_id=client_id or thing,
            clean_session=True,
            keep_alive_secs=keepalive,
            on_connection_interrupted=self._interrupted,
            on_connection_resumed=self._resumed,
        )
        self._stopping = threading.Event()

    def start(self, on_reply: ReplyHandler) -> None:
        self.on_reply = on_reply
        self._cancelled.clear()
        threading.Thread(target=self._connect, name="garrison-awsiot", daemon=True).start()

    def _connect(self) -> None:
        # The first connect is not retried by the SDK; later interruptions are.
        backoff = Backoff(1.0, 120.0)
        while not self._stopping.is_set():
            try:
                self._connection.connect().result()
                break
            except Exception as exc:
                log.warning(
                    "cannot reach AWS IoT %s:%s: %s; retrying in %.0f s", self.endpoint, self.port, exc, backoff.delay
                )
                backoff.wait(self._stopping)
        else:
            return
        self._subscribe()

    def _subscribe(self) -> None:
        try:
            for topic in self.reply_topics:
                future, _ = self._connection.subscribe(topic, self._mqtt.QoS.AT_LEAST_ONCE, self._on_message)
                future.result(10)
        except Exception as exc:
            log.warning("subscription to the reply topics failed: %s; replies will not be seen", exc)
        log.info("connected to %s:%s (AWS IoT Device SDK)", self.endpoint, self.port)
        self._connected.set()

    def _interrupted(self, connection, error, **kwargs) -> None:
        log.warning("connection to AWS IoT lost: %s", error)
        self._connected.clear()

    def _resumed(self, connection, return_code, session_present, **kwargs) -> None:
        if not session_present:
            threading.Thread(target=self._subscribe, daemon=True).start()
        else:
            self._connected.set()

    def _on_message(self, topic, payload, **kwargs) -> None:
        self._deliver(replies.parse(topic, payload))

    def publish(self, topic: str, payload: bytes, timeout: float) -> bool:
        if not self._connected.is_set():
            return False
        try:
            future, _ = self._connection.publish(topic, payload, self._mqtt.QoS.AT_LEAST_ONCE)
            future.result(timeout)
            return True
        except Exception as exc:
            log.warning("publish to %s not acknowledged: %s", topic, exc)
            return False

    def stop(self) -> None:
        self._stopping.set()
        if self._connected.is_set():
            try:
                self._connection.disconnect().result(5)
            except Exception:
                pass
        self._connected.clear()
