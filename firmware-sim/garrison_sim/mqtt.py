"""A paho-mqtt client that works with paho 1.6 and 2.x, and broker URL parsing."""

import threading
import uuid
from typing import Optional, Tuple
import paho.mqtt.client as mqtt

from garrison.agent.transports import paho_compat


class BrokerError(RuntimeError):
    """The broker URL is wrong or the broker cannot be reached."""


def parse_broker(url: str) -> Tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host[:port] or mqtts://host[:port]."""
    try:
        host, port, tls, _, _ = paho_compat.parse_broker_url(url if "://" in url else f"mqtt://{url}")
    except ValueError as exc:
        raise BrokerError(str(exc)) from None
    return host, port, tls


def new_client(client_id: Optional[str] = None) -> mqtt.Client:
    return paho_compat.new_client(client_id or f"garrison-sim-{uuid.uuid4().hex[:10]}")


def connect(url: str, client_id: Optional[str] = None, timeout: float = 10.0, max_inflight: int = 1000) -> mqtt.Client:
    """A connected client with its network loop running in a background thread."""
    host, port, tls = parse_broker(url)
    client = new_client(client_id)
    if tls:
        client.tls_set()
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    result = {}

    def on_connect(_client, _userdata, _flags, reason_code, _properties=None):
        result["rc"] = reason_code
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=60)
    except OSError as exc:
        raise BrokerError(f"cannot reach broker {paho_compat.redact_broker_url(url)}: {exc}") from None
    client.loop_start()
    if not connected.wait(timeout) or _failed(result.get("rc")):
        client.loop_stop()
        raise BrokerError(
            f"broker {paho_compat.redact_broker_url(url)} refused or did not answer the connection ({result.get('rc')})"
        )
    return client


def _failed(rc) -> bool:
    if rc is None:
        return True
    return bool(getattr(rc, "is_failure", rc != 0))
