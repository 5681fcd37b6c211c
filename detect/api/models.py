"""The HTTP API's request and response bodies, as pydantic models (AWS IoT's field names).

They are what the OpenAPI document describes and what FastAPI checks: a request body or query
value that does not fit is a 400 naming the field, before any handler runs. Response models
allow extra fields, so a field the engine adds later is passed through rather than dropped.
"""

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field

# the body of POST /security-profiles/{name}: the model the engine checks every profile with
from garrison.detect.judge.profile_schema import ProfileDocument  # noqa: F401


class Record(BaseModel):
    """A response record: the fields listed are always there; the engine may add others."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    code: str = Field(examples=["InvalidRequest"])
    message: str


class ErrorResponse(BaseModel):
    """Every error: 400 (bad request), 401, 404 (unknown name or id), 405, 413 (body too large)."""

    error: ErrorDetail


class Health(Record):
    status: str = Field(examples=["ok"])


# ---- things and groups ---------------------------------------------------------------------


class Thing(Record):
    thingName: str
    registeredTime: float = Field(description="epoch seconds")
    preRegistered: bool
    lastReportId: Optional[int] = None
    lastReportTime: Optional[float] = Field(None, description="epoch seconds")
    reports: int
    groups: List[str]


class ThingList(Record):
    things: List[Thing]


class ThingCreated(Record):
    thingName: str
    created: bool = Field(description="false when the thing was already known")


class ThingDeleted(Record):
    thingName: str
    deleted: bool


class ThingGroup(Record):
    groupName: str
    description: str
    creationTime: float = Field(description="epoch seconds")
    things: List[str]


class ThingGroupList(Record):
    thingGroups: List[ThingGroup]


class GroupCreate(BaseModel):
    """POST /thing-groups/{thingGroupName}: the body is optional."""

    description: str = Field("", max_length=2028)


class GroupCreated(Record):
    thingGroupName: str
    created: bool


class GroupDeleted(Record):
    thingGroupName: str
    deleted: bool


class Added(Record):
    added: bool


class Removed(Record):
    removed: bool


# ---- security profiles ---------------------------------------------------------------------


class ProfileSummary(Record):
    securityProfileName: str
    behaviors: List[Optional[str]] = Field(description="behavior names")
    targets: List[str] = Field(description="all, group:NAME or thing:NAME")


class ProfileList(Record):
    securityProfiles: List[ProfileSummary]


class ProfilePut(Record):
    securityProfileName: str
    created: bool = Field(description="false when an existing profile was replaced")
    targets: List[str]


class StatisticalThresholdStatus(Record):
    statistic: Optional[str]
    value: Optional[float] = Field(description="the fleet percentile now in force; null before the first")
    devices: int
    computedTime: Optional[float] = Field(description="epoch seconds")


class BehaviorModelStatus(Record):
    behaviorName: str
    modelStatus: str = Field(examples=["PENDING_BUILD", "ACTIVE", "EXPIRED"])


class ProfileDescription(Record):
    securityProfileName: str
    profile: Dict[str, Any] = Field(description="the CreateSecurityProfile document as applied")
    targets: List[str]
    statisticalThresholds: Optional[Dict[str, StatisticalThresholdStatus]] = Field(
        None, description="per statistical behavior (present when the profile has one)"
    )
    behaviorModelTrainingSummaries: Optional[List[BehaviorModelStatus]] = Field(
        None, description="per ML behavior (present when the profile has one)"
    )


class Attached(Record):
    attached: bool


class Detached(Record):
    detached: bool


# ---- violations ----------------------------------------------------------------------------


class ActiveViolation(Record):
    """AWS's ActiveViolation."""

    violationId: str
    thingName: str
    securityProfileName: str
    behavior: Dict[str, Any] = Field(description="the behavior as in the profile")
    lastViolationValue: Optional[Dict[str, Any]] = Field(description='a MetricValue such as {"count": 9}')
    lastViolationTime: Optional[float] = Field(description="epoch seconds")
    violationStartTime: Optional[float] = Field(description="epoch seconds")
    verificationState: Optional[str] = None
    verificationStateDescription: Optional[str] = None
    violationEventAdditionalInfo: Dict[str, Any] = Field(default_factory=dict)


class Violation(ActiveViolation):
    """An ActiveViolation plus how the episode ended."""

    active: bool
    violationEndTime: Optional[float] = Field(None, description="epoch seconds")
    violationEndType: Optional[str] = None


class ActiveViolationList(Record):
    activeViolations: List[ActiveViolation]


class ViolationList(Record):
    violations: List[Violation]


class ViolationEvent(Record):
    """AWS's ViolationEvent."""

    violationId: str
    thingName: str
    securityProfileName: str
    behavior: Dict[str, Any]
    metricValue: Optional[Dict[str, Any]] = None
    violationEventAdditionalInfo: Dict[str, Any] = Field(default_factory=dict)
    violationEventType: str = Field(examples=["in-alarm", "alarm-cleared", "alarm-invalidated"])
    verificationState: Optional[str] = None
    verificationStateDescription: Optional[str] = None
    violationEventTime: float = Field(description="epoch seconds")


class ViolationEventList(Record):
    violationEvents: List[ViolationEvent]


class VerificationRequest(BaseModel):
    """PutVerificationStateOnViolation's body."""

    verificationState: str = Field(examples=["TRUE_POSITIVE"])
    verificationStateDescription: Optional[str] = Field(None, max_length=1000)


# ---- actions and ML ------------------------------------------------------------------------


class ActionExecution(Record):
    seq: int
    time: float = Field(description="epoch seconds")
    violationId: Optional[str] = None
    thingName: str
    securityProfileName: Optional[str] = None
    behaviorName: Optional[str] = None
    action: Any = Field(description="the rule that ran, as configured")
    dryRun: bool
    outcome: str = Field(examples=["done", "no-change", "dry-run", "failed"])
    detail: Optional[str] = None


class ResponseRequest(BaseModel):
    """POST /things/{thingName}/responses: one action, as a profile rule spells it (docs/actions.md)."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(examples=["quarantine", "release", "disable", "enable", "run-command", "reconfigure"])
    dryRun: bool = False
    group: Optional[str] = Field(None, max_length=128)
    command: Optional[List[str]] = Field(None, max_length=64)
    timeout_seconds: Optional[float] = None
    request: Optional[Dict[str, Any]] = Field(
        None, examples=[{"request": "report-every", "seconds": 30, "for_seconds": 600}]
    )


class ActionExecutionList(Record):
    actionExecutions: List[ActionExecution]


class TrainingSummary(Record):
    securityProfileName: str
    behaviorName: str
    modelStatus: Optional[str] = None


class TrainingSummaries(Record):
    """GetBehaviorModelTrainingSummaries, plus per-thing summaries (our extension)."""

    summaries: List[TrainingSummary]
    thingSummaries: List[Dict[str, Any]]


class ProfileDeleted(Record):
    securityProfileName: str
    deleted: bool
