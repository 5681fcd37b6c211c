"""The wire contract's name rules: thing, custom metric, security profile and behavior names.

AWS IoT allows 1-128 characters of [a-zA-Z0-9:_-] for all four (custom metric names must also
stay out of AWS's reserved "aws:" namespace). The same characters keep MQTT wildcards and "/"
out of topics and certificate common names. This module is the only place that spells the rule:
the agent checks names when they are added, the engine when a report, a profile, a certificate
or a broker ACL names them.
"""

import re
from dataclasses import dataclass
from typing import Any, Optional

from garrison.wire.limits import MAX_NAME_CHARS

CHARS = "a-zA-Z0-9:_-"
_NAME = re.compile(f"[{CHARS}]{{1,{MAX_NAME_CHARS}}}")
SHAPE = f"1-{MAX_NAME_CHARS} characters of [{CHARS}]"  # the rule in words, for messages and docs


class InvalidName(ValueError):
    """A name that breaks its rule; `rule` is the NameRule it broke."""

    def __init__(self, rule: "NameRule", name: Any):
        super().__init__(f"invalid {rule.what} {_show(name)}: {rule.text}")
        self.rule = rule
        self.name = name


@dataclass(frozen=True)
class NameRule:
    """One kind of name: what it is called, and an optional reserved prefix it must not use."""

    what: str
    reserved_prefix: Optional[str] = None

    @property
    def text(self) -> str:
        """The rule as a sentence, e.g. "thing names are 1-128 characters of [a-zA-Z0-9:_-]"."""
        text = f"{self.what}s are {SHAPE}"
        if self.reserved_prefix:
            text += f' and must not start with "{self.reserved_prefix}"'
        return text

    def valid(self, name: Any) -> bool:
        return (
            isinstance(name, str)
            and _NAME.fullmatch(name) is not None
            and not (self.reserved_prefix and name.startswith(self.reserved_prefix))
        )

    def check(self, name: Any) -> str:
        """`name` itself, or raise InvalidName naming this rule."""
        if not self.valid(name):
            raise InvalidName(self, name)
        return name


NAME = NameRule("name")  # the bare shape (e.g. metric and dimension names in a profile)
THING = NameRule("thing name")
CUSTOM_METRIC = NameRule("custom metric name", reserved_prefix="aws:")
PROFILE = NameRule("security profile name")
BEHAVIOR = NameRule("behavior name")


def valid_thing_name(name: Any) -> bool:
    return THING.valid(name)


def check_thing_name(name: Any) -> str:
    return THING.check(name)


def check_custom_metric_name(name: Any) -> str:
    return CUSTOM_METRIC.check(name)


def check_profile_name(name: Any) -> str:
    return PROFILE.check(name)


def check_behavior_name(name: Any) -> str:
    return BEHAVIOR.check(name)


def _show(name: Any, limit: int = 60) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def thing_name_from(text: str, fallback: str = "garrison-device") -> str:
    """A valid thing name made from `text` (e.g. a host name): other characters become "-"."""
    name = re.sub(f"[^{CHARS}]", "-", text)[:MAX_NAME_CHARS]
    return name if THING.valid(name) else fallback
