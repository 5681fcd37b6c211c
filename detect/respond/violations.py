"""Violations as AWS IoT Device Defender models them.

An episode starts with `in-alarm`, ends with `alarm-cleared` (the device is back to normal) or
`alarm-invalidated` (the device went silent, or the behavior no longer applies to it), and keeps
one violation id from start to end. While it lasts, further violating datapoints update its
`lastViolationValue` / `lastViolationTime` without new events. An operator can set a
verification state on it at any time.

This module turns evaluation outcomes into rows in garrison.detect.state.store (inside the caller's
transaction) and rows into AWS-shaped records: ActiveViolation (ListActiveViolations) and
ViolationEvent (ListViolationEvents), times in epoch seconds as floats like AWS's CLI output.
"""

import uuid
from dataclasses import dataclass
from typing import Any, Dict, Optional

from garrison.detect.judge.evaluate import ALARM_CLEARED, IN_ALARM  # the judge names the transitions
from garrison.detect.state.store import NotFound, Store, StoreError, loads

ALARM_INVALIDATED = "alarm-invalidated"
EVENT_TYPES = (IN_ALARM, ALARM_CLEARED, ALARM_INVALIDATED)
VERIFICATION_STATES = ("FALSE_POSITIVE", "BENIGN_POSITIVE", "TRUE_POSITIVE", "UNKNOWN")
MAX_DESCRIPTION = 1000  # AWS's limit on verificationStateDescription


def _seconds(ms: Optional[int]) -> Optional[float]:
    return None if ms is None else ms / 1000.0


@dataclass(frozen=True)
class Event:
    """One violation event, as stored (times in ms)."""

    seq: int
    violation_id: str
    event_type: str
    time_ms: int
    thing: str
    profile: str
    behavior: Dict[str, Any]
    metric_value: Any
    additional_info: Any
    suppress_alerts: bool
    verification_state: Optional[str] = None
    verification_description: Optional[str] = None

    @classmethod
    def from_row(cls, row) -> "Event":
        return cls(
            row["seq"],
            row["violation_id"],
            row["event_type"],
            row["time_ms"],
            row["thing"],
            row["profile"],
            loads(row["behavior"]),
            loads(row["metric_value"]),
            loads(row["additional_info"]),
            bool(row["suppress_alerts"]),
            row["verification_state"],
            row["verification_description"],
        )

    def to_record(self) -> Dict[str, Any]:
        """ViolationEvent, with AWS's field names."""
        return {
            "violationId": self.violation_id,
            "thingName": self.thing,
            "securityProfileName": self.profile,
            "behavior": self.behavior,
            "metricValue": self.metric_value,
            "violationEventAdditionalInfo": self.additional_info or {},
            "violationEventType": self.event_type,
            "verificationState": self.verification_state,
            "verificationStateDescription": self.verification_description,
            "violationEventTime": _seconds(self.time_ms),
        }


def active_record(row) -> Dict[str, Any]:
    """ActiveViolation, with AWS's field names."""
    return {
        "violationId": row["violation_id"],
        "thingName": row["thing"],
        "securityProfileName": row["profile"],
        "behavior": loads(row["behavior"]),
        "lastViolationValue": loads(row["last_value"]),
        "lastViolationTime": _seconds(row["last_ms"]),
        "violationStartTime": _seconds(row["start_ms"]),
        "verificationState": row["verification_state"],
        "verificationStateDescription": row["verification_description"],
        "violationEventAdditionalInfo": loads(row["additional_info"]) or {},
    }


def violation_record(row) -> Dict[str, Any]:
    """An ActiveViolation record plus how the episode ended (for `violations list` of all episodes)."""
    record = active_record(row)
    record["active"] = row["end_ms"] is None
    record["violationEndTime"] = _seconds(row["end_ms"])
    record["violationEndType"] = row["end_type"]
    return record


def _event(store: Store, seq: Optional[int]) -> Optional[Event]:
    if seq is None:
        return None
    rows = store.list_events(after_seq=seq - 1, limit=1)
    return Event.from_row(rows[0]) if rows else None


def record_datapoint(
    store: Store,
    thing: str,
    profile: str,
    behavior: Dict[str, Any],
    *,
    transition: Optional[str],
    violating: bool,
    metric_value: Any,
    time_ms: int,
    additional_info: Optional[Dict[str, Any]] = None,
) -> Optional[Event]:
    """Apply one evaluated datapoint to the violation of (thing, profile, behavior).

    Call inside the store transaction that also saves the evaluation state. Returns the new
    event, if the datapoint started or ended an episode.
    """
    if transition is None and not violating:
        return None  # a conforming datapoint that clears nothing changes no violation
    suppress = bool(behavior.get("suppressAlerts", False))
    current = store.open_violation(thing, profile, behavior["name"])
    if transition == IN_ALARM:
        if current is not None:  # already open (state was reset under it): keep the episode
            store.update_violation_value(current["violation_id"], metric_value, time_ms, additional_info)
            return None
        violation_id = str(uuid.uuid4())
        store.insert_violation(violation_id, thing, profile, behavior, metric_value, time_ms, additional_info)
        return _event(
            store,
            store.insert_event(
                violation_id, IN_ALARM, time_ms, thing, profile, behavior, metric_value, additional_info, suppress
            ),
        )
    if current is None:
        return None
    if transition == ALARM_CLEARED:
        store.close_violation(current["violation_id"], ALARM_CLEARED, time_ms)
        return _event(
            store,
            store.insert_event(
                current["violation_id"],
                ALARM_CLEARED,
                time_ms,
                thing,
                profile,
                behavior,
                metric_value,
                additional_info,
                suppress,
            ),
        )
    if violating:
        store.update_violation_value(current["violation_id"], metric_value, time_ms, additional_info)
    return None


def invalidate(store: Store, row, time_ms: int, reason: str) -> Optional[Event]:
    """End an open episode with `alarm-invalidated` (and forget its evaluation state)."""
    behavior = loads(row["behavior"])
    store.close_violation(row["violation_id"], ALARM_INVALIDATED, time_ms)
    store.delete_state(row["thing"], row["profile"], row["behavior_name"])
    info = dict(loads(row["additional_info"]) or {})
    info["invalidationReason"] = reason
    return _event(
        store,
        store.insert_event(
            row["violation_id"],
            ALARM_INVALIDATED,
            time_ms,
            row["thing"],
            row["profile"],
            behavior,
            loads(row["last_value"]),
            info,
            bool(behavior.get("suppressAlerts", False)),
        ),
    )


def verify(store: Store, violation_id: str, state: str, description: Optional[str] = None) -> Dict[str, Any]:
    """Set the verification state of a violation (active or ended); returns its record."""
    if state not in VERIFICATION_STATES:
        raise StoreError(f"verification state must be one of {', '.join(VERIFICATION_STATES)}, got {state!r}")
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise StoreError(f"verification description is longer than {MAX_DESCRIPTION} characters")
    with store.transaction():
        if not store.set_verification(violation_id, state, description):
            raise NotFound(f"no violation with id {violation_id!r}")
        return violation_record(store.get_violation(violation_id))
