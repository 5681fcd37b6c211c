"""Run an audit: read the sources, run the checks, apply suppressions, store the task and its
findings in AWS's shapes (DescribeAuditTask, ListAuditFindings), notify the alert targets.

Sources and settings come from the engine config's [audit] table or the command line:

    [audit]
    pki_dir = "/etc/garrison/pki"
    broker_config = "/etc/mosquitto/garrison/mosquitto.conf"
    broker_log = "/var/log/mosquitto/mosquitto.log"
    expiring_days = 30
    age_days = 365
    debian_blocklist = "/usr/share/openssl-blacklist/blacklist.RSA-2048"   # optional
    checks = ["DEVICE_CERTIFICATE_AGE_CHECK"]   # enable these besides the default ones
"""

import datetime
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from garrison.detect.audit import sources
from garrison.detect.audit.checks import Context, Settings, registry, resource_key
from garrison.detect.audit.store import AuditStore

log = logging.getLogger("garrison.audit")

ON_DEMAND, SCHEDULED = "ON_DEMAND_AUDIT_TASK", "SCHEDULED_AUDIT_TASK"
COMPLIANT, NON_COMPLIANT, FAILED = "COMPLETED_COMPLIANT", "COMPLETED_NON_COMPLIANT", "FAILED"


class AuditError(ValueError):
    """Bad audit input (unknown check, bad setting); one line."""


@dataclass
class AuditSources:
    pki_dir: Optional[str] = None
    broker_config: Optional[str] = None
    broker_log: Optional[str] = None
    settings: Settings = field(default_factory=Settings)
    extra_checks: List[str] = field(default_factory=list)  # enabled besides the defaults

    def merged(self, **overrides: Any) -> "AuditSources":
        out = AuditSources(
            self.pki_dir, self.broker_config, self.broker_log, Settings(**vars(self.settings)), list(self.extra_checks)
        )
        for key, value in overrides.items():
            if value is None:
                continue
            if hasattr(out.settings, key):
                setattr(out.settings, key, value)
            else:
                setattr(out, key, value)
        return out


_KEYS = {
    "pki_dir",
    "broker_config",
    "broker_log",
    "expiring_days",
    "age_days",
    "debian_blocklist",
    "engine_identity",
    "checks",
    "min_takeovers",
    "broker_pid_file",
}  # for the `disable` response's SIGHUP (garrison.detect.respond.revocation)


def sources_from_config(doc: Optional[Mapping[str, Any]]) -> AuditSources:
    """The engine config's [audit] table."""
    doc = doc or {}
    if not isinstance(doc, Mapping):
        raise AuditError("audit: expected a table with pki_dir, broker_config, broker_log, ...")
    unknown = set(doc) - _KEYS
    if unknown:
        raise AuditError(f"audit: unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("pki_dir", "broker_config", "broker_log", "debian_blocklist", "engine_identity", "broker_pid_file"):
        if key in doc and (not isinstance(doc[key], str) or not doc[key]):
            raise AuditError(f"audit.{key}: expected a non-empty string")
    for key in ("expiring_days", "age_days", "min_takeovers"):
        if key in doc and (not isinstance(doc[key], int) or isinstance(doc[key], bool) or doc[key] < 1):
            raise AuditError(f"audit.{key}: expected a positive integer")
    checks = doc.get("checks", [])
    if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
        raise AuditError("audit.checks: expected a list of check names")
    check_names(checks)
    settings = Settings(
        expiring_days=doc.get("expiring_days", 30),
        age_days=doc.get("age_days", 365),
        debian_blocklist=Path(doc["debian_blocklist"]) if doc.get("debian_blocklist") else None,
        engine_identity=doc.get("engine_identity"),
        min_takeovers=doc.get("min_takeovers", 2),
    )
    return AuditSources(doc.get("pki_dir"), doc.get("broker_config"), doc.get("broker_log"), settings, list(checks))


def check_names(names: Sequence[str]) -> List[str]:
    known = registry()
    for name in names:
        if name not in known:
            raise AuditError(f"unknown check {name!r} (known: {', '.join(sorted(known))})")
    return list(names)


def _context(src: AuditSources, now: datetime.datetime, store: Optional[AuditStore]) -> Tuple[Context, Dict[str, str]]:
    """The context, and the sources that could not be read (source -> reason)."""
    ctx = Context(now=now, settings=src.settings, log_path=src.broker_log)
    broken: Dict[str, str] = {}
    if src.pki_dir:
        try:
            ctx.pki = sources.load_pki(src.pki_dir)
            for problem in ctx.pki.problems:
                log.warning("audit: %s", problem)
        except sources.SourceError as exc:
            broken["pki"] = str(exc)
    if src.broker_config:
        try:
            ctx.broker = sources.load_broker_config(src.broker_config)
        except sources.SourceError as exc:
            broken["broker"] = str(exc)
    if src.broker_log:
        try:
            ctx.log = sources.load_broker_log(src.broker_log)
        except sources.SourceError as exc:
            broken["log"] = str(exc)
    if store is not None:
        ctx.postures = store.postures()
    return ctx, broken


_SOURCE_HINT = {
    "pki": "no PKI directory (--pki or audit.pki_dir)",
    "broker": "no broker config (--broker-config or audit.broker_config)",
    "log": "no broker log (--broker-log or audit.broker_log)",
    "postures": "no posture data (needs the engine's database)",
}


def run_audit(
    src: AuditSources,
    checks: Optional[Sequence[str]] = None,
    store: Optional[AuditStore] = None,
    task_type: str = ON_DEMAND,
    scheduled_name: Optional[str] = None,
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """Run the audit; returns {"task": ..., "findings": [...]} (and stores them when `store`).

    `checks`: the checks to run (each runs, or is FAILED with the reason its source is missing).
    None: every enabled check whose sources are given."""
    now_s = time.time() if now is None else now
    moment = datetime.datetime.fromtimestamp(now_s, datetime.timezone.utc)
    known = registry()
    ctx, broken = _context(src, moment, store)
    if checks:
        selected = check_names(checks)
    else:
        enabled = [c for c in known.values() if c.enabled_by_default or c.name in src.extra_checks]
        selected = [c.name for c in enabled if all(ctx.has(n) or n in broken for n in c.needs)]
    suppressed = {(s["checkName"], s["resourceKey"]) for s in store.suppressions(int(now_s * 1000))} if store else set()
    task_id = secrets.token_hex(16)
    details: Dict[str, Dict[str, Any]] = {}
    findings: List[Dict[str, Any]] = []
    keys: List[str] = []
    for name in selected:
        check = known[name]
        missing = [n for n in check.needs if not ctx.has(n)]
        if missing:
            reason = "; ".join(broken.get(n, _SOURCE_HINT[n]) for n in missing)
            details[name] = {
                "checkRunStatus": FAILED,
                "checkCompliant": False,
                "totalResourcesCount": 0,
                "nonCompliantResourcesCount": 0,
                "suppressedNonCompliantResourcesCount": 0,
                "errorCode": "MISSING_SOURCE",
                "message": reason,
            }
            continue
        try:
            total, found = check.run(ctx)
        except Exception as exc:  # one broken check must not lose the others
            log.exception("audit check %s failed", name)
            details[name] = {
                "checkRunStatus": FAILED,
                "checkCompliant": False,
                "totalResourcesCount": 0,
                "nonCompliantResourcesCount": 0,
                "suppressedNonCompliantResourcesCount": 0,
                "errorCode": "INTERNAL_ERROR",
                "message": f"{type(exc).__name__}: {exc}",
            }
            continue
        resources, suppressed_resources = set(), set()
        for item in found:
            key = resource_key(item["nonCompliantResource"]["resourceIdentifier"])
            is_suppressed = (name, key) in suppressed
            resources.add(key)
            if is_suppressed:
                suppressed_resources.add(key)
            findings.append(
                dict(
                    {
                        "findingId": secrets.token_hex(16),
                        "taskId": task_id,
                        "checkName": name,
                        "taskStartTime": now_s,
                        "findingTime": now_s,
                        "severity": check.severity,
                    },
                    **item,
                    isSuppressed=is_suppressed,
                )
            )
            keys.append(key)
        live = resources - suppressed_resources
        details[name] = {
            "checkRunStatus": NON_COMPLIANT if live else COMPLIANT,
            "checkCompliant": not live,
            "totalResourcesCount": max(total, len(resources)),
            "nonCompliantResourcesCount": len(resources),
            "suppressedNonCompliantResourcesCount": len(suppressed_resources),
        }
    statuses = [d["checkRunStatus"] for d in details.values()]
    task = {
        "taskId": task_id,
        "taskType": task_type,
        "taskStatus": "COMPLETED",
        "taskStartTime": now_s,
        "taskStatistics": {
            "totalChecks": len(details),
            "inProgressChecks": 0,
            "waitingForDataCollectionChecks": 0,
            "compliantChecks": statuses.count(COMPLIANT),
            "nonCompliantChecks": statuses.count(NON_COMPLIANT),
            "failedChecks": statuses.count(FAILED),
            "canceledChecks": 0,
        },
        "auditDetails": details,
        "sources": {"pki_dir": src.pki_dir, "broker_config": src.broker_config, "broker_log": src.broker_log},
    }
    if scheduled_name:
        task["scheduledAuditName"] = scheduled_name
    if store is not None:
        store.save_task(task, findings, keys)
    log.info(
        "audit task %s: %d checks, %d non-compliant, %d failed, %d findings",
        task_id,
        len(details),
        statuses.count(NON_COMPLIANT),
        statuses.count(FAILED),
        len(findings),
    )
    return {"task": task, "findings": findings}


def notification(task: Mapping[str, Any]) -> Dict[str, Any]:
    """AWS's audit SNS notification for a finished task."""
    stats = task["taskStatistics"]
    message = {
        "taskId": task["taskId"],
        "taskStatus": task["taskStatus"],
        "taskType": task["taskType"],
        "failedChecksCount": stats["failedChecks"],
        "canceledChecksCount": stats["canceledChecks"],
        "nonCompliantChecksCount": stats["nonCompliantChecks"],
        "compliantChecksCount": stats["compliantChecks"],
        "totalChecksCount": stats["totalChecks"],
        "taskStartTime": int(task["taskStartTime"] * 1000),
        "auditDetails": [
            {
                "checkName": name,
                "checkRunStatus": d["checkRunStatus"],
                "nonCompliantResourcesCount": d["nonCompliantResourcesCount"],
                "totalResourcesCount": d["totalResourcesCount"],
                "suppressedNonCompliantResourceCount": d["suppressedNonCompliantResourcesCount"],
            }
            for name, d in task["auditDetails"].items()
        ],
    }
    if task.get("scheduledAuditName"):
        message["scheduledAuditName"] = task["scheduledAuditName"]
    return message


def notify(alerts: Any, task: Mapping[str, Any]) -> None:
    """Hand the task's notification to the alert targets (never raises)."""
    if alerts is None:
        return
    try:
        alerts.deliver(notification(task))
    except Exception:
        log.exception("audit notification for task %s failed", task.get("taskId"))
