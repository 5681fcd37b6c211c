"""Dimensions (AWS CreateDimension, type TOPIC_FILTER): MQTT topic filters that narrow the
message and authorization metrics of a behavior (`metricDimension {dimensionName, operator}`).

With operator IN (the default) a behavior counts only the messages whose topic matches one of the
dimension's filters; with NOT_IN only those matching none. Filters use MQTT's wildcards: `+` is
exactly one level, `#` (last, alone in its level) any number of levels including none. As in
MQTT, a filter starting with a wildcard does not match a topic starting with `$`.
"""

from typing import Any, Callable, Dict, List, Mapping, Sequence

from garrison.wire import names

TYPES = ("TOPIC_FILTER",)
MAX_VALUES = 5  # AWS: 1-5 stringValues
MAX_VALUE_LENGTH = 256  # AWS: each 1-256 characters


class DimensionError(ValueError):
    """A dimension AWS would refuse."""


def check(name: Any, dimension_type: Any, values: Any) -> List[str]:
    """The dimension's filters, validated (DimensionError names the problem)."""
    if not names.NAME.valid(name):
        raise DimensionError(f"dimension names are {names.SHAPE}, got {name!r}")
    if dimension_type not in TYPES:
        raise DimensionError(f"type must be TOPIC_FILTER, got {dimension_type!r}")
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_VALUES:
        raise DimensionError(f"stringValues must be a list of 1 to {MAX_VALUES} MQTT topic filters")
    for value in values:
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_VALUE_LENGTH:
            raise DimensionError(f"each topic filter must be 1-{MAX_VALUE_LENGTH} characters, got {value!r}")
        levels = value.split("/")
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != len(levels) - 1):
                raise DimensionError(f"{value!r}: '#' must be the last level, alone")
            if "+" in level and level != "+":
                raise DimensionError(f"{value!r}: '+' must be alone in its level")
    return list(dict.fromkeys(values))


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches the MQTT `topic_filter`."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def matcher(filters: Sequence[str], operator: str = "IN") -> Callable[[str], bool]:
    """A topic predicate: in one of the filters (IN), or in none (NOT_IN)."""
    filters = tuple(filters)
    if operator == "NOT_IN":
        return lambda topic: not any(matches(f, topic) for f in filters)
    return lambda topic: any(matches(f, topic) for f in filters)


def record(row: Mapping[str, Any]) -> Dict[str, Any]:
    """DescribeDimension's shape (times in epoch seconds)."""
    return {
        "name": row["name"],
        "type": row["type"],
        "stringValues": row["values"],
        "creationDate": row["created_ms"] / 1000.0,
        "lastModifiedDate": row["updated_ms"] / 1000.0,
    }
