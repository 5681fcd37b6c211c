"""The wire contract's topics: where a device publishes reports and hears the engine's replies.

    $aws/things/{thing}/defender/metrics/{json|cbor}                    report, device -> engine
    $aws/things/{thing}/defender/metrics/{json|cbor}/{accepted|rejected} reply, engine -> device
    garrison/things/{thing}/control                                     reconfiguration, engine -> device
    $CONTROL/dynamic-security/v1[/response]                             broker control, engine <-> Mosquitto

This module is the only place that spells the layout; the agent, the engine, the broker's ACLs,
the simulators and the tests build and parse topics through it.
"""

import re
from typing import Any, Optional, Tuple

from garrison.wire.limits import MAX_TOPIC_THING_BYTES

FORMATS = ("json", "cbor")
OUTCOMES = ("accepted", "rejected")
_PREFIX, _MIDDLE = "$aws/things/", "/defender/metrics/"
# A thing can only be answered if the broker takes the reply topic: no wildcards, "/" or NUL
# (MQTT), no control characters (Mosquitto disconnects clients that publish them), no lone
# surrogates (not UTF-8), bounded length.
_UNSAFE_TOPIC_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f+#/\ud800-\udfff]")


def _layout(thing: str, fmt: str) -> str:
    return f"{_PREFIX}{thing}{_MIDDLE}{fmt}"


def report_topic(thing: str, fmt: str) -> str:
    """The topic a device publishes its reports to; ValueError for a format other than json/cbor."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose json or cbor)")
    return _layout(thing, fmt)


def reply_topic(thing: str, fmt: str, outcome: str) -> str:
    """Where the engine answers a report: its topic plus /accepted or /rejected."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r} (accepted or rejected)")
    return f"{report_topic(thing, fmt)}/{outcome}"


def reply_topics(thing: str, fmt: str) -> Tuple[str, str]:
    """(accepted topic, rejected topic) for a thing's reports in format `fmt`."""
    return reply_topic(thing, fmt, "accepted"), reply_topic(thing, fmt, "rejected")


def report_filter(thing: str = "+", fmt: str = "+") -> str:
    """A subscription filter for reports ("+" matches any thing / any format)."""
    return _layout(thing, fmt)


def reply_filter(thing: str = "+", fmt: str = "+", outcome: str = "+") -> str:
    """A subscription filter for replies ("+" matches any thing / format / outcome)."""
    return f"{_layout(thing, fmt)}/{outcome}"


# What the engine subscribes to (QoS 1): every thing's reports in both formats.
ENGINE_SUBSCRIPTIONS = tuple(report_filter("+", fmt) for fmt in FORMATS)


def parse_report_topic(topic: Any) -> Optional[Tuple[str, str]]:
    """(thing, format) of a report topic, else None (replies and anything else included)."""
    if not isinstance(topic, str) or not topic.startswith(_PREFIX):
        return None
    parts = topic.split("/")
    if len(parts) != 6 or parts[3:5] != ["defender", "metrics"] or parts[5] not in FORMATS or not parts[2]:
        return None
    return parts[2], parts[5]


def parse_reply_topic(topic: Any) -> Optional[Tuple[str, str, str]]:
    """(thing, format, outcome) of a reply topic, else None."""
    if not isinstance(topic, str) or "/" not in topic:
        return None
    base, _, outcome = topic.rpartition("/")
    parsed = parse_report_topic(base) if outcome in OUTCOMES else None
    return None if parsed is None else (parsed[0], parsed[1], outcome)


def reply_safe(thing: str) -> bool:
    """Whether a reply topic for `thing` can be published (see _UNSAFE_TOPIC_CHARS)."""
    return (
        not _UNSAFE_TOPIC_CHARS.search(thing) and len(thing.encode("utf-8", "surrogatepass")) <= MAX_TOPIC_THING_BYTES
    )


# Device reconfiguration (a Garrison extension, not AWS's): the engine publishes bounded requests
# (garrison.agent.control) to one topic per thing; only the engine may publish there and a device
# may read only its own (broker ACL).
_CONTROL_PREFIX, _CONTROL_SUFFIX = "garrison/things/", "/control"


def control_topic(thing: str) -> str:
    """Where the engine sends `thing` reconfiguration requests."""
    return f"{_CONTROL_PREFIX}{thing}{_CONTROL_SUFFIX}"


def control_filter(thing: str = "+") -> str:
    """A filter (or ACL pattern, with %u) for control topics."""
    return control_topic(thing)


def parse_control_topic(topic: Any) -> Optional[str]:
    """The thing a control topic addresses, else None."""
    if not isinstance(topic, str) or not topic.startswith(_CONTROL_PREFIX) or not topic.endswith(_CONTROL_SUFFIX):
        return None
    thing = topic[len(_CONTROL_PREFIX) : -len(_CONTROL_SUFFIX)]
    return thing if thing and "/" not in thing else None


# Mosquitto's dynamic security plugin: commands in, responses out (garrison.detect.respond.brokercontrol).
DYNSEC_COMMAND_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE_TOPIC = DYNSEC_COMMAND_TOPIC + "/response"
DYNSEC_FILTER = "$CONTROL/dynamic-security/#"
# Topics a role must name besides "#" to cover everything: "#" does not match "$..." topics.
DOLLAR_ROOTS = ("$aws/#", "$SYS/#", "$CONTROL/#")
