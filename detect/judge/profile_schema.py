"""The shape of a CreateSecurityProfile document, as pydantic models.

`garrison.detect.judge.profiles.load_profile` validates every document with `ProfileDocument`
first (types, name rules, enums, ranges, unknown criteria fields), and the HTTP API publishes
the same model as the request body of POST /security-profiles/{name}. What depends on the metric
(which value key, which comparison operator, which criteria kinds combine) is checked after,
in profiles.py, because it needs the metric catalogue; so `criteria.value` is described here
but its content is checked there, with the metric's own messages.

Field names are AWS's; fields we do not use (alertTargets, tags, ...) are kept as given.
"""
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

# profiles.py imports this module only inside load_profile, so the constants come from there
from garrison.detect.judge.profiles import (CONFIDENCE_LEVELS, CONSECUTIVE_RANGE, DURATIONS, MAX_BEHAVIORS,
                                            MAX_DESCRIPTION, NAME_RE, STATISTICS)

NAME_RULE = "1-128 characters of [a-zA-Z0-9:_-]"


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"{what} must be {NAME_RULE}, got {value!r}")
    return value


class _Model(BaseModel):
    # Keep what we do not use (AWS fields such as exportMetric's siblings) and check types
    # strictly: "1" is not a number and 1 is not true, as in AWS's JSON API.
    model_config = ConfigDict(extra="allow", strict=True)


class MetricValue(_Model):
    """Exactly one key, the one the metric's type takes (checked with the metric, in profiles.py)."""
    model_config = ConfigDict(extra="allow", strict=False)
    count: Optional[Any] = Field(None, description="a non-negative integer (long), or a string of digits",
                                 json_schema_extra={"type": ["integer", "string"]})
    cidrs: Optional[Any] = Field(None, description="CIDRs such as 192.0.2.0/24",
                                 json_schema_extra={"type": "array", "items": {"type": "string"}})
    ports: Optional[Any] = Field(None, description="ports 0-65535",
                                 json_schema_extra={"type": "array", "items": {"type": "integer"}})
    number: Optional[Any] = Field(None, description="a finite number", json_schema_extra={"type": "number"})
    numbers: Optional[Any] = Field(None, json_schema_extra={"type": "array", "items": {"type": "number"}})
    strings: Optional[Any] = Field(None, json_schema_extra={"type": "array", "items": {"type": "string"}})


class StatisticalThreshold(_Model):
    statistic: Literal[STATISTICS]  # type: ignore[valid-type]


class MlDetectionConfig(_Model):
    confidenceLevel: Literal[CONFIDENCE_LEVELS]  # type: ignore[valid-type]


class Criteria(_Model):
    model_config = ConfigDict(extra="forbid", strict=True)   # an unknown criteria field is a mistake
    comparisonOperator: Optional[str] = Field(None, examples=["less-than-equals", "in-port-set"])
    value: Optional[MetricValue] = None
    durationSeconds: Optional[Literal[DURATIONS]] = None  # type: ignore[valid-type]
    consecutiveDatapointsToAlarm: StrictInt = Field(1, ge=CONSECUTIVE_RANGE[0], le=CONSECUTIVE_RANGE[1])
    consecutiveDatapointsToClear: StrictInt = Field(1, ge=CONSECUTIVE_RANGE[0], le=CONSECUTIVE_RANGE[1])
    statisticalThreshold: Optional[StatisticalThreshold] = None
    mlDetectionConfig: Optional[MlDetectionConfig] = None

    @field_validator("value", mode="before")
    @classmethod
    def _value_is_an_object(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be an object such as {\"count\": 10}")
        return value


class MetricDimension(_Model):
    dimensionName: str = Field(pattern=f"^{NAME_RE.pattern}$")
    operator: Literal["IN", "NOT_IN"] = "IN"


class Behavior(_Model):
    name: str = Field(pattern=f"^{NAME_RE.pattern}$")
    metric: str = Field(pattern=f"^{NAME_RE.pattern}$", examples=["aws:num-established-tcp-connections"])
    criteria: Optional[Criteria] = None
    suppressAlerts: StrictBool = False
    exportMetric: StrictBool = False
    metricDimension: Optional[MetricDimension] = None

    @field_validator("name", mode="before")
    @classmethod
    def _behavior_name(cls, value: Any) -> Any:
        return _name(value, "behavior name")

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_name(cls, value: Any) -> Any:
        return _name(value, "metric")


class RetainedMetric(_Model):
    metric: str = Field(pattern=f"^{NAME_RE.pattern}$")
    metricDimension: Optional[MetricDimension] = None

    @field_validator("metric", mode="before")
    @classmethod
    def _metric_name(cls, value: Any) -> Any:
        return _name(value, "metric")


class ProfileDocument(_Model):
    """A CreateSecurityProfile request (securityProfileName may come from the API's path)."""
    securityProfileName: Optional[str] = Field(None, pattern=f"^{NAME_RE.pattern}$")
    securityProfileDescription: str = Field("", max_length=MAX_DESCRIPTION)
    behaviors: List[Behavior] = Field(default_factory=list, max_length=MAX_BEHAVIORS)
    alertTargets: Optional[Dict[str, Any]] = None
    additionalMetricsToRetainV2: Optional[List[RetainedMetric]] = None
    tags: Optional[List[Dict[str, Any]]] = None

    @field_validator("securityProfileName", mode="before")
    @classmethod
    def _profile_name(cls, value: Any) -> Any:
        return None if value is None else _name(value, "securityProfileName")

    @field_validator("behaviors", mode="before")
    @classmethod
    def _at_most(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_BEHAVIORS:
            raise ValueError(f"at most {MAX_BEHAVIORS} behaviors per profile, got {len(value)}")
        return value

    @field_validator("securityProfileDescription", mode="before")
    @classmethod
    def _description(cls, value: Any) -> Any:
        if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
            raise ValueError(f"must be a string of at most {MAX_DESCRIPTION} characters")
        return value

