"""Audit tasks through the CLI and the HTTP API: AWS shapes, exit codes, suppressions,
scheduled audits, notifications."""
import datetime
import json
import urllib.request

import pytest

from garrison.detect import cli
from garrison.detect import config as configuration
from garrison.detect.audit import schedule
from garrison.detect.audit.store import AuditStore
from garrison.detect.audit.task import AuditSources, notification
from garrison.detect.state.store import Store

from helpers import DAY, NOW, fleet, plant

UTC = datetime.timezone.utc


@pytest.fixture
def pki_dir(tmp_path):
    ca = fleet(tmp_path / "pki")
    plant(ca, "expired-1", not_after=NOW - DAY)
    return ca.dir


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_audit_run_json_has_aws_shapes_and_exits_0_with_findings(tmp_path, pki_dir, capsys):
    db = str(tmp_path / "e.db")
    code, out, err = run(capsys, "audit", "run", "--db", db, "--pki", str(pki_dir), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["taskType"] == "ON_DEMAND_AUDIT_TASK" and doc["taskStatus"] == "COMPLETED" and len(doc["taskId"]) == 32
    detail = doc["auditDetails"]["DEVICE_CERTIFICATE_EXPIRING_CHECK"]
    assert set(detail) >= {"checkRunStatus", "totalResourcesCount", "nonCompliantResourcesCount",
                           "suppressedNonCompliantResourcesCount"}
    assert detail["checkRunStatus"] == "COMPLETED_NON_COMPLIANT"
    finding, = doc["findings"]
    assert set(finding) >= {"findingId", "taskId", "checkName", "severity", "nonCompliantResource",
                            "reasonForNonComplianceCode", "reasonForNonCompliance", "isSuppressed"}
    assert finding["taskId"] == doc["taskId"]
    # the table, the task list and the stored findings
    code, out, _ = run(capsys, "audit", "run", "--db", db, "--pki", str(pki_dir))
    assert code == 0 and "DEVICE_CERTIFICATE_EXPIRING_CHECK" in out and "expired on" in out
    code, out, _ = run(capsys, "audit", "tasks", "--db", db, "--json")
    assert len(json.loads(out)["tasks"]) == 2
    code, out, _ = run(capsys, "audit", "findings", "--db", db, "--task", doc["taskId"], "--json")
    assert json.loads(out)["findings"] == doc["findings"]


@pytest.mark.parametrize("argv", [
    ["audit", "run", "--check", "NO_SUCH_CHECK"],
    ["audit", "suppress", "--check", "DEVICE_CERTIFICATE_EXPIRING_CHECK", "--resource", "x"],
    ["audit", "suppress", "--check", "DEVICE_CERTIFICATE_EXPIRING_CHECK", "--resource", "x", "--until", "2001-01-01"],
    ["audit", "findings", "--task", "no-such-task"],
    ["audit", "schedule", "create", "s1", "--frequency", "WEEKLY"],
    ["audit", "mitigate", "--task", "t", "--check", "LOGGING_DISABLED_CHECK", "--action", "NOPE"],
])
def test_bad_usage_exits_2_with_one_line(tmp_path, capsys, argv):
    code, out, err = run(capsys, *argv, "--db", str(tmp_path / "e.db"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("garrison-detect: "), err


def test_a_suppressed_finding_is_reported_as_suppressed(tmp_path, pki_dir, capsys):
    db = str(tmp_path / "e.db")
    _, out, _ = run(capsys, "audit", "run", "--db", db, "--pki", str(pki_dir), "--json")
    cert_id = json.loads(out)["findings"][0]["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]
    code, out, err = run(capsys, "audit", "suppress", "--db", db, "--check", "DEVICE_CERTIFICATE_EXPIRING_CHECK",
                         "--resource", cert_id, "--indefinitely", "--description", "lab device")
    assert code == 0, err
    _, out, _ = run(capsys, "audit", "run", "--db", db, "--pki", str(pki_dir), "--json")
    doc = json.loads(out)
    assert doc["findings"][0]["isSuppressed"] is True
    detail = doc["auditDetails"]["DEVICE_CERTIFICATE_EXPIRING_CHECK"]
    assert detail["suppressedNonCompliantResourcesCount"] == 1 and detail["checkRunStatus"] == "COMPLETED_COMPLIANT"
    _, out, _ = run(capsys, "audit", "suppressions", "--db", db, "--json")
    assert json.loads(out)["suppressions"][0]["suppressIndefinitely"] is True
    # a suppression that has run out no longer counts
    store = AuditStore(Store(db))
    store.suppress("DEVICE_CERTIFICATE_EXPIRING_CHECK", cert_id, 1000, "", 0)
    _, out, _ = run(capsys, "audit", "run", "--db", db, "--pki", str(pki_dir), "--json")
    assert json.loads(out)["findings"][0]["isSuppressed"] is False


def at(*args):
    return datetime.datetime(*args, tzinfo=UTC)


def test_next_run_for_each_frequency():
    sunday = at(2026, 11, 29, 12, 0)   # a Sunday
    assert schedule.next_run({"frequency": "DAILY", "timeOfDay": "03:00"}, sunday) == at(2026, 11, 30, 3, 0)
    assert schedule.next_run({"frequency": "DAILY", "timeOfDay": "13:00"}, sunday) == at(2026, 11, 29, 13, 0)
    assert schedule.next_run({"frequency": "WEEKLY", "dayOfWeek": "WED", "timeOfDay": "03:00"}, sunday) == \
        at(2026, 12, 2, 3, 0)
    biweekly = {"frequency": "BIWEEKLY", "dayOfWeek": "MON", "timeOfDay": "03:00", "anchorDate": "2026-11-30"}
    assert schedule.next_run(biweekly, at(2026, 11, 30, 4, 0)) == at(2026, 12, 14, 3, 0)
    assert schedule.next_run({"frequency": "MONTHLY", "dayOfMonth": "LAST", "timeOfDay": "03:00"}, sunday) == \
        at(2026, 11, 30, 3, 0)
    assert schedule.next_run({"frequency": "MONTHLY", "dayOfMonth": "31", "timeOfDay": "03:00"},
                             at(2027, 2, 1)) == at(2027, 2, 28, 3, 0)   # a short month: its last day
    assert schedule.next_run({"frequency": "MONTHLY", "dayOfMonth": "5", "timeOfDay": "03:00"}, sunday) == \
        at(2026, 12, 5, 3, 0)


class Recorder:
    def __init__(self):
        self.messages = []

    def deliver(self, message):
        self.messages.append(message)


def test_due_scheduled_audits_run_once_and_notify(tmp_path, pki_dir):
    astore = AuditStore(Store(str(tmp_path / "e.db")))
    created = int(at(2026, 11, 29, 12, 0).timestamp() * 1000)
    doc = schedule.create(astore, "nightly", "DAILY", time_of_day="03:00",
                          checks=["DEVICE_CERTIFICATE_EXPIRING_CHECK"], now_ms=created)
    assert doc["nextRunTime"] == at(2026, 11, 30, 3, 0).timestamp()
    alerts = Recorder()
    src = AuditSources(pki_dir=str(pki_dir))
    assert schedule.due(astore, src, created + 3600_000, alerts) == []          # not yet
    later = int(at(2026, 12, 2, 8, 0).timestamp() * 1000)                        # two runs missed: one runs
    tasks = schedule.due(astore, src, later, alerts)
    assert len(tasks) == 1 and tasks[0]["taskType"] == "SCHEDULED_AUDIT_TASK"
    assert tasks[0]["scheduledAuditName"] == "nightly"
    assert schedule.due(astore, src, later + 1000, alerts) == []
    listed, = astore.schedules()
    assert listed["nextRunTime"] == at(2026, 12, 3, 3, 0).timestamp() and listed["lastTaskId"] == tasks[0]["taskId"]
    message, = alerts.messages
    assert message["taskId"] == tasks[0]["taskId"] and message["taskType"] == "SCHEDULED_AUDIT_TASK"
    assert message["taskStatus"] == "COMPLETED" and message["nonCompliantChecksCount"] == 1
    assert message["auditDetails"] == [{"checkName": "DEVICE_CERTIFICATE_EXPIRING_CHECK",
                                        "checkRunStatus": "COMPLETED_NON_COMPLIANT", "nonCompliantResourcesCount": 1,
                                        "totalResourcesCount": 5, "suppressedNonCompliantResourceCount": 0}]
    assert notification(tasks[0]) == message


def test_schedule_cli(tmp_path, capsys):
    db = str(tmp_path / "e.db")
    code, out, err = run(capsys, "audit", "schedule", "create", "monthly-end", "--db", db, "--frequency", "monthly",
                         "--day-of-month", "LAST", "--check", "LOGGING_DISABLED_CHECK")
    assert code == 0, err
    code, out, _ = run(capsys, "audit", "schedule", "list", "--db", db, "--json")
    item, = json.loads(out)["scheduledAudits"]
    assert item["frequency"] == "MONTHLY" and item["dayOfMonth"] == "LAST"
    assert run(capsys, "audit", "schedule", "create", "monthly-end", "--db", db, "--frequency", "DAILY")[0] == 2
    assert run(capsys, "audit", "schedule", "delete", "monthly-end", "--db", db)[0] == 0
    assert run(capsys, "audit", "schedule", "delete", "monthly-end", "--db", db)[0] == 2


def test_engine_config_audit_table(tmp_path, pki_dir):
    path = tmp_path / "engine.toml"
    path.write_text(f'[audit]\npki_dir = "{pki_dir}"\nexpiring_days = 10\nchecks = ["DEVICE_CERTIFICATE_AGE_CHECK"]\n')
    assert configuration.load(str(path)).audit["expiring_days"] == 10
    path.write_text('[audit]\npki_directory = "/x"\n')
    with pytest.raises(configuration.ConfigError, match="pki_directory"):
        configuration.load(str(path))


def test_http_api_audit_routes(any_db, pki_dir):
    from garrison.detect.api.server import ApiServer
    from garrison.detect.config import Config
    from garrison.detect.engine import Engine
    engine = Engine(Store(any_db), config=Config(audit={"pki_dir": str(pki_dir)}), ml=None)
    alerts = Recorder()
    engine.alerts = alerts
    server = ApiServer(engine, "tok", port=0).start()

    def call(method, path, body=None):
        request = urllib.request.Request(server.url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        status, task = call("POST", "/audit/tasks", {"targetCheckNames": ["DEVICE_CERTIFICATE_EXPIRING_CHECK"]})
        assert status == 200 and task["findings"][0]["checkName"] == "DEVICE_CERTIFICATE_EXPIRING_CHECK"
        assert alerts.messages[0]["taskId"] == task["taskId"]
        assert call("GET", f"/audit/tasks/{task['taskId']}")[1]["auditDetails"] == task["auditDetails"]
        assert len(call("GET", "/audit/findings")[1]["findings"]) == 1
        assert call("GET", "/audit/tasks")[1]["tasks"][0]["taskId"] == task["taskId"]
        assert call("GET", "/audit/tasks/nope")[0] == 404
        assert call("POST", "/audit/tasks", {"targetCheckNames": ["NOPE"]})[0] == 400
        assert call("POST", "/audit/scheduledaudits/weekly", {"frequency": "WEEKLY", "dayOfWeek": "FRI"})[0] == 200
        assert call("GET", "/audit/scheduledaudits")[1]["scheduledAudits"][0]["dayOfWeek"] == "FRI"
        assert call("DELETE", "/audit/scheduledaudits/weekly")[0] == 200
        key = task["findings"][0]["nonCompliantResource"]["resourceIdentifier"]["deviceCertificateId"]
        assert call("POST", "/audit/suppressions", {"checkName": "DEVICE_CERTIFICATE_EXPIRING_CHECK",
                                                    "resourceKey": key, "suppressIndefinitely": True})[0] == 200
        assert call("GET", "/audit/suppressions")[1]["suppressions"][0]["resourceKey"] == key
        status, done = call("POST", "/audit/mitigationactions/tasks", {
            "taskId": task["taskId"], "checkName": "DEVICE_CERTIFICATE_EXPIRING_CHECK",
            "action": "ADD_THINGS_TO_THING_GROUP"})
        assert status == 200 and done["actions"][0]["outcome"] == "dry-run"
        assert "/audit/tasks" in call("GET", "/openapi.json")[1]["paths"]
    finally:
        server.stop()


def test_serves_scheduler_runs_due_audits_with_the_engine_config_sources(any_db, pki_dir):
    from garrison.detect.audit.schedule import Scheduler
    from garrison.detect.config import Config
    from garrison.detect.engine import Engine

    class Clock:
        ms = int(at(2026, 11, 29, 12, 0).timestamp() * 1000)

        def now_ms(self):
            return self.ms

        def now(self):
            return self.ms / 1000.0

    clock = Clock()
    engine = Engine(Store(any_db), clock, Config(audit={"pki_dir": str(pki_dir)}), ml=None)
    engine.alerts = Recorder()
    schedule.create(AuditStore(engine.store), "daily", "DAILY", time_of_day="13:00", now_ms=clock.ms)
    scheduler = Scheduler(engine)
    assert scheduler.tick() == []
    clock.ms += 2 * 3600 * 1000          # 14:00: due
    task, = scheduler.tick()
    assert task["scheduledAuditName"] == "daily" and task["auditDetails"]["DEVICE_CERTIFICATE_EXPIRING_CHECK"][
        "nonCompliantResourcesCount"] == 1
    assert engine.alerts.messages[0]["taskId"] == task["taskId"]
    clock.ms += 60 * 1000
    assert scheduler.tick() == []        # ran: next is tomorrow


def test_the_agent_can_turn_the_posture_collector_off(tmp_path):
    from garrison.agent.collect import ReportCollector
    on = ReportCollector(tmp_path, ["listening_tcp", "posture"], persist=False, posture_checks=["sysctl"])
    report, _ = on.collect(1)
    assert set(report["custom_metrics"]) == {"posture:sysctl_unhardened"}
    off = ReportCollector(tmp_path, ["listening_tcp"], persist=False)
    report, _ = off.collect(2)
    assert "custom_metrics" not in report
