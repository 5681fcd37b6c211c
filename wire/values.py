"""The wire contract's value rules: what a number, a string, an address and a custom metric may be.

The engine's validator (garrison.detect.ingest.validate) and the agent (garrison.agent.report)
both use these predicates, so a value the agent sends is a value the engine takes. The agent
checks each custom metric with `custom_metric` when it collects it: a bad value costs only that
metric, never the report.
"""

import math
import socket
from typing import Any, Dict, List, Mapping

from garrison.wire.limits import MAX_INT, MAX_STRING_CHARS, MIN_CUSTOM_NUMBER

# The value shapes of a custom metric, each inside a one-element array:
# {"name": [{"number": 1}]}; a bare object is malformed.
CUSTOM_METRIC_TYPES = ("number", "number_list", "string_list", "ip_list")

# The rules in words (the agent's ValueErrors and the engine's messages name them).
NUMBER_RULE = "custom numbers are finite and integers lie within -2^63 .. 2^63-1 (booleans are not numbers)"
TEXT_RULE = f"strings are valid Unicode of at most {MAX_STRING_CHARS} characters"
IP_RULE = "ip_list entries are IPv4 or IPv6 addresses"


class InvalidValue(ValueError):
    """A value that breaks the wire contract; the message names the rule."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A custom number: an int in signed 64 bits, or a finite float."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return MIN_CUSTOM_NUMBER <= value <= MAX_INT
    return isinstance(value, float) and math.isfinite(value)


def is_ip(text: Any) -> bool:
    """IPv4 dotted quad or IPv6 text (inet_pton: strict, and far faster than ipaddress)."""
    if not isinstance(text, str):
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except (OSError, ValueError):  # ValueError: embedded NUL
            pass
    return False


def is_text(value: Any) -> bool:
    """A str of sane length that is valid Unicode (JSON's "\\ud800" escapes decode to lone
    surrogates, which no database or encoder downstream would take)."""
    if not isinstance(value, str) or len(value) > MAX_STRING_CHARS:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_ITEM_CHECKS = {
    "number_list": (is_number, NUMBER_RULE),
    "string_list": (is_text, TEXT_RULE),
    "ip_list": (is_ip, IP_RULE),
}


def check_custom_value(kind: str, value: Any) -> Any:
    """The checked value of a typed custom metric (`kind` one of CUSTOM_METRIC_TYPES), as the
    engine will take it; InvalidValue naming the broken rule otherwise."""
    if kind == "number":
        if not is_number(value):
            raise InvalidValue(f"{value!r} is not a valid number: {NUMBER_RULE}")
        return value
    if kind not in _ITEM_CHECKS:
        raise InvalidValue(f"unknown custom metric type {kind!r}: use one of {', '.join(CUSTOM_METRIC_TYPES)}")
    if not isinstance(value, (list, tuple)):
        raise InvalidValue(f"a {kind} is a list, got {type(value).__name__}")
    ok, rule = _ITEM_CHECKS[kind]
    for i, item in enumerate(value):
        if not ok(item):
            raise InvalidValue(f"{kind}[{i}] = {_show(item)} is not valid: {rule}")
    return list(value)


def custom_metric(value: Any) -> List[Dict[str, Any]]:
    """The one-element-array form of a custom metric value, checked against the engine's rules.

    A number becomes {"number": n}; a list of numbers a number_list; a list of strings a
    string_list; an explicit {"ip_list": [...]} (or any one-key typed dict) is taken as it is.
    InvalidValue (a ValueError naming the rule) for anything the engine would refuse.
    """
    if isinstance(value, bool):
        raise InvalidValue("a custom metric cannot be a boolean (report 0/1 as a number)")
    if isinstance(value, (int, float)):
        return [{"number": check_custom_value("number", value)}]
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in CUSTOM_METRIC_TYPES:
            raise InvalidValue(
                f'a typed custom metric is one of {", ".join(CUSTOM_METRIC_TYPES)}, e.g. {{"ip_list": [...]}}'
            )
        kind, inner = next(iter(value.items()))
        return [{kind: check_custom_value(kind, inner)}]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return [{"number_list": check_custom_value("number_list", items)}]
        if all(isinstance(v, str) for v in items):
            return [{"string_list": check_custom_value("string_list", items)}]
        raise InvalidValue("a custom metric list holds only numbers or only strings")
    raise InvalidValue(
        f"unsupported custom metric value of type {type(value).__name__} "
        '(a number, a list of numbers or strings, or {"ip_list": [...]})'
    )


def escape_controls(text: str) -> str:
    """A string the other side chose, fit to show a person: its control characters escaped
    (`\\x1b`, `\\r`, `\\n`), so it cannot drive a terminal or forge a log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "..." + text[-1]
