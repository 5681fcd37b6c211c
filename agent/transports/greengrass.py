"""Greengrass v2 transport: reports go to AWS IoT Core through the nucleus's IPC MQTT proxy.

Inside a Greengrass component the device has no certificate of its own to use: the nucleus owns
the MQTT connection, and components publish with `PublishToIoTCore` over the IPC socket the
nucleus passes in the environment. The recipe (packaging/greengrass/recipe.yaml) must grant
`aws.greengrass.ipc.mqttproxy` publish on the report topic and subscribe on its reply topics.

awsiotsdk is an extra (`pip install garrison[aws]`); it is imported only when this transport
starts, so the agent runs without it everywhere else (awscrt has no armv7l wheel).
"""

import logging
import os
import threading
from typing import Any, Callable, List, Optional

from garrison.wire import replies, topics
from garrison.agent import report
from garrison.agent.transports.backoff import Backoff
from garrison.agent.transports.base import ReplyHandler, Transport, TransportError

log = logging.getLogger(__name__)

# What the nucleus puts in a component's environment; without them there is nothing to talk to.
NUCLEUS_ENV = ("SVCUID", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
MAX_BACKOFF_S = 60.0
QOS_AT_LEAST_ONCE = "1"  # awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE


def _load_ipc():
    """(clientv2 module, model module) of awsiotsdk, or a one-line TransportError."""
    try:
        from awsiot.greengrasscoreipc import clientv2, model
    except ImportError as exc:
        raise TransportError(
            "the greengrass transport needs awsiotsdk: pip install 'garrison[aws]' "
            f"(awscrt has no armv7l wheel; use the mqtt transport there) [{exc}]"
        ) from None
    return clientv2, model


def check_environment() -> None:
    """Raise a one-line TransportError unless awsiotsdk imports and the nucleus started us."""
    _load_ipc()
    missing = [name for name in NUCLEUS_ENV if not os.environ.get(name)]
    if missing:
        raise TransportError(
            f"not running as a Greengrass component ({', '.join(missing)} unset): the greengrass "
            "transport only works when the nucleus starts the agent"
        )


def _default_client_factory():
    clientv2, _ = _load_ipc()
    return clientv2.GreengrassCoreIPCClientV2()


class GreengrassTransport(Transport):
    """Publish reports with PublishToIoTCore (QoS 1); replies arrive via SubscribeToIoTCore.

    `client_factory` returns a GreengrassCoreIPCClientV2 (or anything with its
    publish_to_iot_core_async / subscribe_to_iot_core / close methods); tests inject one because
    no nucleus runs outside a Greengrass core device.
    """

    name = "greengrass"

    def __init__(self, thing: str, fmt: str = "json", client_factory: Optional[Callable[[], Any]] = None):
        super().__init__(thing, fmt)
        report.topic(thing, fmt)  # validates fmt now, with the same error as everywhere else
        self._factory = client_factory or _default_client_factory
        self._client = None
        self._operations: List[Any] = []  # the SDK's subscription operations, closed on _close
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reconnect = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self, on_reply: ReplyHandler) -> None:
        """Check the SDK and the nucleus environment now (clear errors), then connect in the background."""
        self.on_reply = on_reply
        self._cancelled.clear()
        if self._factory is _default_client_factory:
            check_environment()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="garrison-greengrass", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Connect and subscribe; on a lost stream, reconnect with jittered exponential backoff."""
        backoff = Backoff(1.0, MAX_BACKOFF_S)
        while not self._stopping.is_set():
            self._reconnect.clear()
            try:
                self._open()
                backoff.reset()
                log.info(
                    "connected to the Greengrass nucleus IPC; replies on %s",
                    ", ".join(topics.reply_topics(self.thing, self.fmt)),
                )
                self._reconnect.wait()  # set by a failed stream, or by stop()
            except Exception as exc:  # the SDK raises many types; all mean "not connected"
                log.warning("Greengrass IPC unavailable (%s); retrying in %.0f s", exc, backoff.delay)
            self._close()
            if backoff.wait(self._stopping):
                break

    def _open(self) -> None:
        client = self._factory()
        with self._lock:
            self._client = client
        for topic in topics.reply_topics(self.thing, self.fmt):
            _, operation = client.subscribe_to_iot_core(
                topic_name=topic,
                qos=QOS_AT_LEAST_ONCE,
                on_stream_event=self._on_message,
                on_stream_error=self._on_stream_error,
                on_stream_closed=self._on_stream_closed,
            )
            self._operations.append(operation)
        self._connected.set()

    def _close(self) -> None:
        self._connected.clear()
        with self._lock:
            client, self._client = self._client, None
            operations, self._operations = self._operations, []
        for operation in operations:
            try:
                operation.close()
            except Exception:  # already closed by the nucleus
                pass
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _on_message(self, event: Any) -> None:
        """An IoTCoreMessage from a reply topic -> Reply for the daemon."""
        message = getattr(event, "message", None)
        if message is None:
            return
        self._deliver(replies.parse(message.topic_name or "", bytes(message.payload or b"")))

    def _on_stream_error(self, error: Exception) -> bool:
        log.warning("Greengrass subscription failed: %s; reconnecting", error)
        self._connected.clear()
        self._reconnect.set()
        return True  # close the stream; _run opens a new one

    def _on_stream_closed(self) -> None:
        if not self._stopping.is_set():
            self._connected.clear()
            self._reconnect.set()

    def publish(self, topic: str, payload: bytes, timeout: float) -> bool:
        """True once the nucleus acknowledged the QoS 1 publish; False otherwise (caller spools)."""
        with self._lock:
            client = self._client
        if client is None or not self.connected:
            return False
        try:
            future = client.publish_to_iot_core_async(topic_name=topic, qos=QOS_AT_LEAST_ONCE, payload=payload)
            future.result(timeout)
            return True
        except Exception as exc:
            # UnauthorizedError means the recipe's accessControl lacks this topic: say so plainly.
            hint = (
                " (check the component's accessControl for aws.greengrass.ipc.mqttproxy)"
                if type(exc).__name__ == "UnauthorizedError"
                else ""
            )
            log.warning("publish to %s via Greengrass failed: %s%s", topic, str(exc) or type(exc).__name__, hint)
            return False

    def stop(self) -> None:
        self._stopping.set()
        self._reconnect.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        self._close()
