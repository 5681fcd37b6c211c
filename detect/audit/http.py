"""The audit's HTTP routes (garrison.detect.api.audit mounts these; AWS IoT's audit API names and
fields). Each takes (engine, path params, query, body) and returns a JSON-able result; bad
input raises StoreError, which the API answers with 400 InvalidRequest."""

import time
from typing import Any, Dict

from garrison.detect.audit import schedule as schedules
from garrison.detect.audit.mitigate import mitigate
from garrison.detect.audit.task import ON_DEMAND, AuditError, notify, run_audit, sources_from_config
from garrison.detect.state.store import StoreError

ROUTES = (  # (method, path, function name, summary, query, body)
    (
        "POST",
        "/audit/tasks",
        "start_audit",
        "Run an on-demand audit now (StartOnDemandAuditTask); returns the task and its findings.",
        (),
        '{"targetCheckNames": [...]} (optional: every enabled check with its sources)',
    ),
    ("GET", "/audit/tasks", "list_tasks", "List audit tasks, newest first (ListAuditTasks).", ("taskType",), None),
    ("GET", "/audit/tasks/{taskId}", "describe_task", "Describe an audit task (DescribeAuditTask).", (), None),
    (
        "GET",
        "/audit/findings",
        "list_findings",
        "List audit findings (ListAuditFindings); default: the latest task.",
        ("taskId", "checkName"),
        None,
    ),
    ("GET", "/audit/suppressions", "list_suppressions", "List audit suppressions in force.", (), None),
    (
        "POST",
        "/audit/suppressions",
        "create_suppression",
        "Suppress a check's findings on one resource (CreateAuditSuppression).",
        (),
        '{"checkName", "resourceKey", "expirationDate" | "suppressIndefinitely": true, "description"}',
    ),
    ("GET", "/audit/scheduledaudits", "list_schedules", "List scheduled audits (ListScheduledAudits).", (), None),
    (
        "POST",
        "/audit/scheduledaudits/{scheduledAuditName}",
        "create_schedule",
        "Create a scheduled audit (CreateScheduledAudit).",
        (),
        '{"frequency", "dayOfWeek", "dayOfMonth", "timeOfDay", "targetCheckNames"}',
    ),
    ("DELETE", "/audit/scheduledaudits/{scheduledAuditName}", "delete_schedule", "Delete a scheduled audit.", (), None),
    (
        "POST",
        "/audit/mitigationactions/tasks",
        "start_mitigation",
        "Apply a mitigation action to a task's findings of one check (dry run unless apply is true).",
        (),
        '{"taskId", "checkName", "action", "apply", "group"}',
    ),
)


def _body(b: Any) -> Dict[str, Any]:
    if b is None:
        return {}
    if not isinstance(b, dict):
        raise StoreError("the body must be a JSON object")
    return b


def handle(name: str, engine, p: Dict[str, str], q: Dict[str, str], b: Any) -> Any:
    try:
        return globals()[name](engine, engine.audit_store(), p, q, _body(b))
    except AuditError as exc:
        raise StoreError(str(exc)) from None


def start_audit(engine, astore, p, q, b):
    checks = b.get("targetCheckNames")
    if checks is not None and (not isinstance(checks, list) or not all(isinstance(c, str) for c in checks)):
        raise AuditError("targetCheckNames must be a list of check names")
    result = run_audit(sources_from_config(getattr(engine.config, "audit", None)), checks or None, astore, ON_DEMAND)
    notify(engine.alerts, result["task"])
    return dict(result["task"], findings=result["findings"])


def list_tasks(engine, astore, p, q, b):
    return {"tasks": astore.list_tasks(q.get("taskType") or None)}


def describe_task(engine, astore, p, q, b):
    return astore.get_task(p["taskId"])


def list_findings(engine, astore, p, q, b):
    task_id = q.get("taskId") or astore.latest_task_id()
    return {"findings": astore.findings(task_id, q.get("checkName") or None) if task_id else []}


def list_suppressions(engine, astore, p, q, b):
    return {"suppressions": astore.suppressions(int(time.time() * 1000))}


def create_suppression(engine, astore, p, q, b):
    from garrison.detect.audit.checks import registry

    check, key = b.get("checkName"), b.get("resourceKey")
    if check not in registry() or not isinstance(key, str) or not key:
        raise AuditError("needs a known checkName and a resourceKey (as the findings show it)")
    until = b.get("expirationDate")
    if bool(b.get("suppressIndefinitely")) == (until is not None):
        raise AuditError("give either expirationDate (epoch seconds) or suppressIndefinitely: true")
    if until is not None and (not isinstance(until, (int, float)) or until <= time.time()):
        raise AuditError("expirationDate must be epoch seconds in the future")
    astore.suppress(
        check, key, None if until is None else int(until * 1000), str(b.get("description", "")), int(time.time() * 1000)
    )
    return {"checkName": check, "resourceKey": key, "created": True}


def list_schedules(engine, astore, p, q, b):
    return {"scheduledAudits": astore.schedules()}


def create_schedule(engine, astore, p, q, b):
    return schedules.create(
        astore,
        p["scheduledAuditName"],
        b.get("frequency"),
        b.get("dayOfWeek"),
        b.get("dayOfMonth"),
        b.get("timeOfDay", "03:00"),
        b.get("targetCheckNames") or [],
        engine.clock.now_ms(),
    )


def delete_schedule(engine, astore, p, q, b):
    astore.delete_schedule(p["scheduledAuditName"])
    return {"scheduledAuditName": p["scheduledAuditName"], "deleted": True}


def start_mitigation(engine, astore, p, q, b):
    for key in ("taskId", "checkName", "action"):
        if not isinstance(b.get(key), str):
            raise AuditError(f"{key} is required")
    done = mitigate(
        astore,
        b["taskId"],
        b["checkName"],
        b["action"],
        bool(b.get("apply")),
        b.get("group", "quarantine"),
        engine.alerts,
        None,
        engine.clock.now_ms(),
    )
    return {"actions": done}
