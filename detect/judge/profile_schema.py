"""The shape of a CreateSecurityProfile document, as pydantic models.

`garrison.detect.judge.profiles.load_profile` checks every document with `ProfileDocument` first
(types, name rules, enums, ranges, unknown criteria fields: everything that does not depend on the
metric), and the HTTP API publishes the same model as the request body of POST
/security-profiles/{name}. What depends on the metric (which value key, which comparison
operator, which criteria kinds combine) is checked after, in profiles.py, with the metric
catalogue; so `criteria.value` is described here, and its content checked there.

Messages are AWS-flavoured and name the value given; pydantic supplies the path
(`behaviors[2].criteria.durationSeconds`). Field names are AWS's; fields we do not use
(alertTargets' content, tags, ...) are kept as given.
"""

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# profiles.py imports this module only inside load_profile, so the constants come from there
from garrison.detect.judge.profiles import (
    CONFIDENCE_LEVELS,
    CONSECUTIVE_RANGE,
    DIMENSION_OPERATORS,
    DURATIONS,
    MAX_BEHAVIORS,
    MAX_DESCRIPTION,
    STATISTICS,
)
from garrison.wire import names
from garrison.wire.limits import MAX_NAME_CHARS

NAME_PATTERN = f"^[{names.CHARS}]{{1,{MAX_NAME_CHARS}}}$"  # for the JSON schema; names.NAME checks


def _name(value: Any, what: str) -> str:
    if not names.NAME.valid(value):  # profile, behavior, metric and dimension names alike
        raise ValueError(f"{what} must be {names.SHAPE}, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: Any, message: str) -> Any:
    if value is not None and not isinstance(value, dict):
        raise ValueError(message)
    return value


class _Model(BaseModel):
    # Keep what we do not use, as given; the validators below check types strictly, as AWS's
    # JSON API does ("300" is not 300, 1 is not true).
    model_config = ConfigDict(extra="allow")


class MetricValue(_Model):
    """Exactly one key: the one the metric's type takes (checked with the metric, in profiles.py)."""

    count: Optional[Any] = Field(
        None,
        description="a non-negative integer (a long), or a string of digits",
        json_schema_extra={"type": ["integer", "string"]},
    )
    cidrs: Optional[Any] = Field(
        None, description="CIDRs such as 192.0.2.0/24", json_schema_extra={"type": "array", "items": {"type": "string"}}
    )
    ports: Optional[Any] = Field(
        None, description="ports 0-65535", json_schema_extra={"type": "array", "items": {"type": "integer"}}
    )
    number: Optional[Any] = Field(None, description="a finite number", json_schema_extra={"type": "number"})
    numbers: Optional[Any] = Field(None, json_schema_extra={"type": "array", "items": {"type": "number"}})
    strings: Optional[Any] = Field(None, json_schema_extra={"type": "array", "items": {"type": "string"}})


class StatisticalThreshold(_Model):
    statistic: str = Field(json_schema_extra={"enum": list(STATISTICS)})


class MlDetectionConfig(_Model):
    confidenceLevel: str = Field(json_schema_extra={"enum": list(CONFIDENCE_LEVELS)})


class Criteria(_Model):
    model_config = ConfigDict(extra="forbid")  # an unknown criteria field is a mistake
    comparisonOperator: Optional[str] = Field(None, examples=["less-than-equals", "in-port-set"])
    value: Optional[MetricValue] = None
    durationSeconds: Optional[int] = Field(None, json_schema_extra={"enum": list(DURATIONS)})
    consecutiveDatapointsToAlarm: int = Field(1, ge=CONSECUTIVE_RANGE[0], le=CONSECUTIVE_RANGE[1])
    consecutiveDatapointsToClear: int = Field(1, ge=CONSECUTIVE_RANGE[0], le=CONSECUTIVE_RANGE[1])
    statisticalThreshold: Optional[StatisticalThreshold] = None
    mlDetectionConfig: Optional[MlDetectionConfig] = None

    @field_validator("comparisonOperator", mode="before")
    @classmethod
    def _operator(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError(f'must be a string such as "less-than", got {value!r}')
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, value: Any) -> Any:
        return _object(value, 'must be an object such as {"count": 10}')

    @field_validator("durationSeconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is not None and (not _is_int(value) or value not in DURATIONS):
            raise ValueError(f"must be one of {', '.join(map(str, DURATIONS))}, got {value!r}")
        return value

    @field_validator("consecutiveDatapointsToAlarm", "consecutiveDatapointsToClear", mode="before")
    @classmethod
    def _consecutive(cls, value: Any) -> Any:
        low, high = CONSECUTIVE_RANGE
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {value!r}")
        return value

    @field_validator("statisticalThreshold", mode="before")
    @classmethod
    def _statistic(cls, value: Any) -> Any:
        got = value.get("statistic") if isinstance(value, dict) else value
        if value is not None and got not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {got!r}")
        return value

    @field_validator("mlDetectionConfig", mode="before")
    @classmethod
    def _confidence(cls, value: Any) -> Any:
        got = value.get("confidenceLevel") if isinstance(value, dict) else value
        if value is not None and got not in CONFIDENCE_LEVELS:
            raise ValueError(f"confidenceLevel must be one of {', '.join(CONFIDENCE_LEVELS)}, got {got!r}")
        return value


class MetricDimension(_Model):
    dimensionName: str = Field(pattern=NAME_PATTERN)
    operator: str = Field("IN", json_schema_extra={"enum": list(DIMENSION_OPERATORS)})

    @field_validator("dimensionName", mode="before")
    @classmethod
    def _dimension_name(cls, value: Any) -> Any:
        return _name(value, "dimensionName")

    @field_validator("operator", mode="before")
    @classmethod
    def _operator(cls, value: Any) -> Any:
        if value not in DIMENSION_OPERATORS:
            raise ValueError(f"must be IN or NOT_IN, got {value!r}")
        return value


class Behavior(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    metric: str = Field(pattern=NAME_PATTERN, examples=["aws:num-established-tcp-connections"])
    criteria: Optional[Criteria] = Field(None, description="none: the metric is only retained")
    suppressAlerts: bool = False
    exportMetric: bool = False
    metricDimension: Optional[MetricDimension] = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"each behavior must be an object, got {value!r}")
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _behavior_name(cls, value: Any) -> Any:
        return _name(value, "behavior name")

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_name(cls, value: Any) -> Any:
        return _name(value, "metric")

    @field_validator("criteria", mode="before")
    @classmethod
    def _criteria(cls, value: Any) -> Any:
        return _object(value, "must be an object")

    @field_validator("suppressAlerts", "exportMetric", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value

    @field_validator("metricDimension", mode="before")
    @classmethod
    def _dimension(cls, value: Any) -> Any:
        return _object(value, "must be an object {dimensionName, operator}")


class RetainedMetric(_Model):
    metric: str = Field(pattern=NAME_PATTERN)
    metricDimension: Optional[MetricDimension] = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be an object {metric}")
        return value

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_name(cls, value: Any) -> Any:
        return _name(value, "metric")


class ProfileDocument(_Model):
    """A CreateSecurityProfile request (in the API, securityProfileName may come from the path)."""

    securityProfileName: Optional[str] = Field(None, pattern=NAME_PATTERN)
    securityProfileDescription: str = Field("", max_length=MAX_DESCRIPTION)
    behaviors: List[Behavior] = Field(default_factory=list, max_length=MAX_BEHAVIORS)
    alertTargets: Optional[Dict[str, Any]] = None
    additionalMetricsToRetainV2: Optional[List[RetainedMetric]] = None
    tags: Optional[List[Any]] = None

    @field_validator("securityProfileName", mode="before")
    @classmethod
    def _profile_name(cls, value: Any) -> Any:
        return None if value is None else _name(value, "securityProfileName")

    @field_validator("securityProfileDescription", mode="before")
    @classmethod
    def _description(cls, value: Any) -> Any:
        if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
            raise ValueError(f"must be a string of at most {MAX_DESCRIPTION} characters")
        return value

    @field_validator("behaviors", mode="before")
    @classmethod
    def _behaviors(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("must be a list")
        if len(value) > MAX_BEHAVIORS:
            raise ValueError(f"at most {MAX_BEHAVIORS} behaviors per profile, got {len(value)}")
        return value

    @field_validator("alertTargets", mode="before")
    @classmethod
    def _alert_targets(cls, value: Any) -> Any:
        return _object(value, 'must be an object such as {"SNS": {...}}')

    @field_validator("additionalMetricsToRetainV2", mode="before")
    @classmethod
    def _retained(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, list):
            raise ValueError("must be a list of {metric, metricDimension}")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, list):
            raise ValueError("must be a list of {Key, Value}")
        return value
