"""Turning pydantic's validation errors into Garrison's one-line messages that name the field.

Used by the engine config (garrison.detect.config), security profiles
(garrison.detect.judge.profiles) and the HTTP API: `behaviors[2].criteria.durationSeconds`.
"""

from typing import Any, Iterable

from pydantic import ValidationError

_PLAIN = {"missing": "is required", "extra_forbidden": "unknown setting"}


def field_path(loc: Iterable[Any]) -> str:
    """("behaviors", 2, "criteria") -> "behaviors[2].criteria"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def message(error: Any) -> str:
    """The text of one pydantic error, without pydantic's "Value error, " prefix."""
    if error.get("type") in _PLAIN:
        return _PLAIN[error["type"]]
    text = str(error.get("msg", "invalid"))
    return text[len("Value error, ") :] if text.startswith("Value error, ") else text


def first_error(exc: ValidationError) -> str:
    """ "path: message" for the first error (one line; pydantic lists them in document order)."""
    error = exc.errors()[0]
    path = field_path(error.get("loc", ()))
    return f"{path}: {message(error)}" if path else message(error)
