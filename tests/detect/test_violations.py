"""garrison.detect.respond.violations: episodes, events and AWS-shaped records, on a real SQLite file."""
import pytest

from garrison.detect.respond import violations
from garrison.detect.state.store import NotFound, Store, StoreError

T0 = 1_700_000_000_000
BEHAVIOR = {"name": "conns", "metric": "aws:num-established-tcp-connections",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}
ACTIVE_FIELDS = {"violationId", "thingName", "securityProfileName", "behavior", "lastViolationValue",
                 "lastViolationTime", "violationStartTime", "verificationState", "verificationStateDescription",
                 "violationEventAdditionalInfo"}
EVENT_FIELDS = {"violationId", "thingName", "securityProfileName", "behavior", "metricValue",
                "violationEventAdditionalInfo", "violationEventType", "verificationState",
                "verificationStateDescription", "violationEventTime"}


@pytest.fixture
def store(any_db):
    s = Store(any_db)  # SQLite, then PostgreSQL
    yield s
    s.close()


def datapoint(store, transition, violating, count, t, behavior=BEHAVIOR):
    with store.transaction():
        return violations.record_datapoint(store, "dev1", "P", behavior, transition=transition,
                                           violating=violating, metric_value={"count": count}, time_ms=t)


def test_an_episode_keeps_one_id_from_in_alarm_to_alarm_cleared(store):
    start = datapoint(store, "in-alarm", True, 9, T0)
    assert start.event_type == "in-alarm" and start.metric_value == {"count": 9}
    assert datapoint(store, None, True, 12, T0 + 1000) is None  # still violating: no new event
    [active] = [violations.active_record(r) for r in store.list_violations(active_only=True)]
    assert set(active) == ACTIVE_FIELDS
    assert active["violationId"] == start.violation_id
    assert active["lastViolationValue"] == {"count": 12}
    assert active["lastViolationTime"] == (T0 + 1000) / 1000 and active["violationStartTime"] == T0 / 1000
    assert active["behavior"] == BEHAVIOR
    assert datapoint(store, None, False, 1, T0 + 2000) is None  # conforming, not yet cleared
    end = datapoint(store, "alarm-cleared", False, 0, T0 + 3000)
    assert end.violation_id == start.violation_id and end.event_type == "alarm-cleared"
    assert store.list_violations(active_only=True) == []
    records = [violations.Event.from_row(r).to_record() for r in store.list_events()]
    assert [set(r) for r in records] == [EVENT_FIELDS, EVENT_FIELDS]
    assert [(r["violationEventType"], r["metricValue"], r["violationEventTime"]) for r in records] == [
        ("in-alarm", {"count": 9}, T0 / 1000), ("alarm-cleared", {"count": 0}, (T0 + 3000) / 1000)]


def test_a_new_episode_gets_a_new_id(store):
    first = datapoint(store, "in-alarm", True, 9, T0)
    datapoint(store, "alarm-cleared", False, 0, T0 + 1)
    second = datapoint(store, "in-alarm", True, 9, T0 + 2)
    assert second.violation_id != first.violation_id
    assert len(store.list_violations()) == 2


def test_clearing_without_an_open_episode_records_nothing(store):
    assert datapoint(store, "alarm-cleared", False, 0, T0) is None
    assert store.list_events() == []


def test_invalidation_ends_the_episode_and_forgets_the_state(store):
    start = datapoint(store, "in-alarm", True, 9, T0)
    store.put_state("dev1", "P", "conns", {"alarm": True, "violating": 1, "conforming": 0}, T0)
    with store.transaction():
        [row] = store.list_violations(active_only=True)
        event = violations.invalidate(store, row, T0 + 5000, "device-silent")
    assert event.violation_id == start.violation_id and event.event_type == "alarm-invalidated"
    assert event.additional_info == {"invalidationReason": "device-silent"}
    assert event.metric_value == {"count": 9}  # the last violating value
    assert store.get_state("dev1", "P", "conns") is None
    [row] = store.list_violations()
    record = violations.violation_record(row)
    assert record["active"] is False and record["violationEndType"] == "alarm-invalidated"


def test_suppressed_alerts_are_recorded_but_never_queued(store):
    quiet = dict(BEHAVIOR, suppressAlerts=True)
    event = datapoint(store, "in-alarm", True, 9, T0, behavior=quiet)
    assert event.suppress_alerts is True
    assert len(store.list_events()) == 1 and store.pending_alerts() == []


@pytest.mark.parametrize("state", violations.VERIFICATION_STATES)
def test_verification_states_with_a_description(store, state):
    start = datapoint(store, "in-alarm", True, 9, T0)
    record = violations.verify(store, start.violation_id, state, "checked by ops")
    assert record["verificationState"] == state and record["verificationStateDescription"] == "checked by ops"
    [event] = [violations.Event.from_row(r).to_record() for r in store.list_events()]
    assert event["verificationState"] == state  # events show the violation's current verification


def test_bad_verification_requests_are_refused(store):
    start = datapoint(store, "in-alarm", True, 9, T0)
    with pytest.raises(StoreError, match="must be one of"):
        violations.verify(store, start.violation_id, "MAYBE")
    with pytest.raises(StoreError, match="longer than 1000"):
        violations.verify(store, start.violation_id, "UNKNOWN", "x" * 1001)
    with pytest.raises(NotFound, match="no violation"):
        violations.verify(store, "no-such-id", "UNKNOWN")
