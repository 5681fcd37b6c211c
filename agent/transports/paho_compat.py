"""One way to read a broker URL and to make a paho-mqtt client, for paho 1.6 and 2.x alike.

Shared by the agent's transport, the detect engine and firmware-sim, so the URL rules and the
paho version switch live in one place.
"""

from typing import Any, Dict, NamedTuple, Optional
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

PAHO_2 = hasattr(mqtt, "CallbackAPIVersion")


class BrokerURL(NamedTuple):
    host: str
    port: int
    tls: bool
    username: Optional[str] = None
    password: Optional[str] = None


def redact_broker_url(url: str) -> str:
    """`url` fit for a log line or an error: the password of a user:pass@ part becomes ***.

    Plain string work (no URL parsing), so that even a malformed URL, or a password with a '/'
    or an '@' in it, never leaks: everything up to the last '@' after the scheme is user info.
    """
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        scheme, rest = "", scheme
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return str(url)
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{hostpart}"


def parse_broker_url(url: str, credentials: bool = True) -> BrokerURL:
    """mqtt://[user:pass@]HOST[:PORT] or mqtts://... (default ports 1883 / 8883).

    Raises ValueError with a one-line reason. `credentials=False` refuses a user in the URL
    (the agent takes them from options, so they do not end up in process listings).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # not `exc`: it can quote the password ("Port could not be cast to integer value as 'S3cret'")
        raise ValueError(f"broker URL {redact_broker_url(url)!r} is invalid: its host or port cannot be read") from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL {redact_broker_url(url)!r} is invalid: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or (parts.username and not credentials):
        raise ValueError(f"broker URL {redact_broker_url(url)!r} is invalid: only scheme, host and port are allowed")
    tls = parts.scheme == "mqtts"
    return BrokerURL(
        parts.hostname,
        port or (8883 if tls else 1883),
        tls,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def new_client(client_id: str, clean_session: bool = True, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    """A paho client with version-2 callbacks on paho 2.x (1.6 has only those)."""
    kwargs: Dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if PAHO_2:
        kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION2
    if protocol != mqtt.MQTTv5:  # MQTT 5 has clean_start on connect() instead
        kwargs["clean_session"] = clean_session
    return mqtt.Client(**kwargs)
