"""Reconfiguration requests on a thing's control topic (garrison.wire.topics.control_topic): the
shape both sides agree on. The engine sends only what `check_request` accepts; the agent checks
again, then applies its own, tighter, configured limits (garrison.agent.control).

    {"request": "report-now"}
    {"request": "report-every", "seconds": 30, "for_seconds": 600}
    {"request": "report-default"}          (back to the configured interval now)
    {"request": "collector", "name": "listening_tcp_ports", "enabled": false}

An optional "id" (string, at most 64 characters) is echoed in the agent's log.
"""

from typing import Any, Dict

MAX_REQUEST_BYTES = 1024
MIN_EVERY_SECONDS = 1
MAX_EVERY_SECONDS = 3600
MAX_FOR_SECONDS = 24 * 3600
REQUESTS = ("report-now", "report-every", "report-default", "collector")
_FIELDS = {
    "report-now": set(),
    "report-every": {"seconds", "for_seconds"},
    "report-default": set(),
    "collector": {"name", "enabled"},
}


class ControlRequestError(ValueError):
    """A request outside the contract; the message says why."""


def _int(doc: Dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ControlRequestError(f"{key} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_request(doc: Any) -> Dict[str, Any]:
    """The request, normalised; ControlRequestError if anything is off."""
    if not isinstance(doc, dict):
        raise ControlRequestError("a control request is a JSON object")
    kind = doc.get("request")
    if kind not in REQUESTS:
        raise ControlRequestError(f"request must be one of {', '.join(REQUESTS)}, got {kind!r}")
    unknown = set(doc) - _FIELDS[kind] - {"request", "id"}
    if unknown:
        raise ControlRequestError(f"{kind}: unknown field {sorted(unknown)[0]!r}")
    out: Dict[str, Any] = {"request": kind}
    if "id" in doc:
        if not isinstance(doc["id"], str) or len(doc["id"]) > 64:
            raise ControlRequestError("id must be a string of at most 64 characters")
        out["id"] = doc["id"]
    if kind == "report-every":
        out["seconds"] = _int(doc, "seconds", MIN_EVERY_SECONDS, MAX_EVERY_SECONDS)
        out["for_seconds"] = _int(doc, "for_seconds", 1, MAX_FOR_SECONDS)
    elif kind == "collector":
        name = doc.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise ControlRequestError("collector: name must be a collector's name")
        if not isinstance(doc.get("enabled"), bool):
            raise ControlRequestError("collector: enabled must be true or false")
        out.update(name=name, enabled=doc["enabled"])
    return out
