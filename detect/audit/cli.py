"""`garrison-detect audit ...`: on-demand and scheduled audits, findings, suppressions, mitigation.

    garrison-detect audit run [--check NAME]... [--pki DIR] [--broker-config FILE] [--broker-log FILE]
                              [--config FILE] [--expiring-days N] [--age-days N] [--debian-blocklist FILE] [--json]
    garrison-detect audit checks
    garrison-detect audit tasks [--json]
    garrison-detect audit findings [--task ID] [--check NAME] [--json]
    garrison-detect audit suppress --check NAME --resource ID (--until DATE | --indefinitely) [--description TEXT]
    garrison-detect audit unsuppress --check NAME --resource ID
    garrison-detect audit suppressions [--json]
    garrison-detect audit schedule create NAME --frequency DAILY|WEEKLY|BIWEEKLY|MONTHLY
                              [--day-of-week MON..SUN] [--day-of-month 1-31|LAST] [--time HH:MM] [--check NAME]...
    garrison-detect audit schedule list [--json] | delete NAME
    garrison-detect audit mitigate --task ID --check NAME --action ACTION [--group G] [--apply]
                              [--broker-pid PID] [--config FILE]

`run` exits 0 when the audit completed, whatever it found (the findings are the output).
"""

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any, List, Optional

from garrison.detect.audit import schedule as schedules
from garrison.detect.audit.checks import registry
from garrison.detect.audit.mitigate import ACTIONS, mitigate
from garrison.detect.audit.store import AuditStore
from garrison.detect.audit.task import AuditError, notify, run_audit, sources_from_config


def add_parser(sub, db_parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `audit` to the `garrison-detect` subparsers `sub`."""
    audit = sub.add_parser(
        "audit",
        help="Device Defender Audit: certificates, broker policy, connections, posture.",
        description="Audit the fleet PKI, the broker's config and log, and device posture (see docs/audit.md).",
        parents=[db_parent],
    )
    parser_class = type(audit)
    actions = audit.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
    actions.required = True

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, description=help_text, parents=[db_parent])

    p = action("run", "run an on-demand audit now (exit 0 when it completed, whatever it found)")
    p.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="NAME",
        help="run this check (repeatable); default: every enabled check whose sources are given",
    )
    _source_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object: the task and its findings (AWS shapes)")
    action("checks", "list the checks, their severity and sources")
    p = action("tasks", "list audit tasks (newest first)")
    p.add_argument("--json", action="store_true")
    p = action("findings", "list findings (default: of the latest task)")
    p.add_argument("--task", metavar="ID")
    p.add_argument("--check", metavar="NAME")
    p.add_argument("--json", action="store_true")
    p = action("suppress", "suppress a check's findings on one resource (until a date or indefinitely)")
    p.add_argument("--check", required=True, metavar="NAME")
    p.add_argument(
        "--resource",
        required=True,
        metavar="ID",
        help="the resource id as `findings` shows it (e.g. a deviceCertificateId, a clientId)",
    )
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--until", metavar="DATE", help="YYYY-MM-DD or an ISO 8601 time (UTC)")
    when.add_argument("--indefinitely", action="store_true")
    p.add_argument("--description", default="")
    p = action("unsuppress", "remove a suppression")
    p.add_argument("--check", required=True, metavar="NAME")
    p.add_argument("--resource", required=True, metavar="ID")
    p = action("suppressions", "list suppressions in force")
    p.add_argument("--json", action="store_true")
    p = action("schedule", "scheduled audits (`serve` runs them): create | list | delete")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=parser_class)
    verbs.required = True
    c = verbs.add_parser("create", help="create a scheduled audit", parents=[db_parent])
    c.add_argument("name")
    c.add_argument("--frequency", required=True, type=str.upper, choices=schedules.FREQUENCIES)
    c.add_argument("--day-of-week", metavar="DAY", help="for WEEKLY and BIWEEKLY: " + ", ".join(schedules.DAYS_OF_WEEK))
    c.add_argument(
        "--day-of-month", metavar="DAY", help="for MONTHLY: 1-31 or LAST (past a short month's end: its last day)"
    )
    c.add_argument("--time", default="03:00", metavar="HH:MM", help="time of day, UTC (default 03:00)")
    c.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="NAME",
        help="checks to run (repeatable); default: every enabled check whose sources are configured",
    )
    verbs.add_parser("list", help="list scheduled audits", parents=[db_parent]).add_argument(
        "--json", action="store_true"
    )
    verbs.add_parser("delete", help="delete a scheduled audit", parents=[db_parent]).add_argument("name")
    p = action("mitigate", "apply a mitigation action to a task's findings of one check (dry run unless --apply)")
    p.add_argument("--task", required=True, metavar="ID")
    p.add_argument("--check", required=True, metavar="NAME")
    p.add_argument(
        "--action",
        dest="mitigation",
        required=True,
        type=str.upper,
        choices=list(ACTIONS),
        metavar="ACTION",
        help=" | ".join(ACTIONS),
    )
    p.add_argument("--group", default="quarantine", help="for ADD_THINGS_TO_THING_GROUP (default quarantine)")
    p.add_argument("--apply", action="store_true", help="do it (default: a dry run, logged as such)")
    p.add_argument(
        "--broker-pid",
        type=int,
        metavar="PID",
        help="the broker to SIGHUP after a config change (default: the config's pid_file)",
    )
    p.add_argument("--config", help="engine configuration, for the alert targets of PUBLISH_FINDINGS_TO_SNS")
    p.add_argument("--json", action="store_true")
    audit.set_defaults(func=run)
    return audit


def _source_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pki", metavar="DIR", help="the fleet PKI directory (garrison-detect pki init --dir)")
    p.add_argument("--broker-config", metavar="FILE", help="the broker's mosquitto.conf")
    p.add_argument("--broker-log", metavar="FILE", help="the broker's log (Mosquitto's format)")
    p.add_argument(
        "--config",
        help="engine configuration file: its [audit] table gives sources and settings "
        "(flags win), its [alerts] the targets told of the result",
    )
    p.add_argument("--expiring-days", type=int, metavar="N", help="certificate expiry threshold (default 30)")
    p.add_argument("--age-days", type=int, metavar="N", help="DEVICE_CERTIFICATE_AGE_CHECK threshold (default 365)")
    p.add_argument(
        "--debian-blocklist",
        metavar="FILE",
        help="openssl-blacklist file for Debian weak keys (CVE-2008-0166); without it that test is skipped",
    )


def _config(path: Optional[str]):
    from garrison.detect import config as configuration

    return configuration.load(path) if path else configuration.Config()


def _alerts(config) -> Any:
    """The config's log and webhook targets (MQTT needs `serve`'s connection)."""
    from garrison.detect.respond.alerts import AlertDispatcher, targets_from_config

    conf = config.alerts
    if isinstance(conf, dict):
        conf = {k: v for k, v in conf.items() if k != "mqtt"}
    elif isinstance(conf, list):
        conf = [t for t in conf if not (isinstance(t, dict) and t.get("type") == "mqtt")]
    return AlertDispatcher(targets_from_config(conf))


def _date(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(f"--until {text!r}: expected YYYY-MM-DD or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def run(args) -> int:
    from garrison.detect.cli import common as base
    from garrison.detect.state.store import Store

    astore = AuditStore(Store(args.db))
    now = time.time()
    if args.action == "run":
        config = _config(args.config)
        src = sources_from_config(getattr(config, "audit", None)).merged(
            pki_dir=args.pki,
            broker_config=args.broker_config,
            broker_log=args.broker_log,
            expiring_days=args.expiring_days,
            age_days=args.age_days,
            debian_blocklist=Path(args.debian_blocklist) if args.debian_blocklist else None,
        )
        for flag, value in (("--expiring-days", args.expiring_days), ("--age-days", args.age_days)):
            if value is not None and value < 1:
                raise AuditError(f"{flag} must be at least 1")
        result = run_audit(src, args.check or None, astore, now=now)
        if args.config:
            alerts = _alerts(config)
            notify(alerts, result["task"])
            alerts.close(5.0)
        if args.json:
            print(json.dumps(dict(result["task"], findings=result["findings"]), indent=2))
        else:
            _print_task(base, result["task"])
            print()
            _print_findings(base, result["findings"])
    elif args.action == "checks":
        print(
            base.table(
                ("CHECK", "SEVERITY", "SOURCES", "DEFAULT", "WHAT"),
                [
                    (c.name, c.severity, ",".join(c.needs), "on" if c.enabled_by_default else "off", c.description)
                    for c in registry().values()
                ],
            )
        )
    elif args.action == "tasks":
        tasks = astore.list_tasks()
        base.show(
            args,
            {"tasks": tasks},
            ("TASK ID", "TYPE", "STATUS", "STARTED", "CHECKS", "NON-COMPLIANT", "FAILED", "SCHEDULE"),
            [
                (
                    t["taskId"],
                    t["taskType"],
                    t["taskStatus"],
                    base.when(t["taskStartTime"]),
                    t["taskStatistics"]["totalChecks"],
                    t["taskStatistics"]["nonCompliantChecks"],
                    t["taskStatistics"]["failedChecks"],
                    t.get("scheduledAuditName"),
                )
                for t in tasks
            ],
            "no audit tasks",
        )
    elif args.action == "findings":
        task_id = args.task or astore.latest_task_id()
        if args.task:
            astore.get_task(args.task)  # NotFound for a wrong id
        findings = astore.findings(task_id, args.check) if task_id else []
        if args.json:
            print(json.dumps({"findings": findings}, indent=2))
        else:
            _print_findings(base, findings)
    elif args.action == "suppress":
        if args.check not in registry():
            raise AuditError(f"unknown check {args.check!r}")
        until = None if args.indefinitely else _date(args.until)
        if until is not None and until <= now:
            raise AuditError(f"--until {args.until} is in the past")
        astore.suppress(
            args.check, args.resource, None if until is None else int(until * 1000), args.description, int(now * 1000)
        )
        print(
            f"suppressed {args.check} findings on {args.resource} "
            f"{'indefinitely' if until is None else 'until ' + base.when(until)}"
        )
    elif args.action == "unsuppress":
        removed = astore.unsuppress(args.check, args.resource)
        print(f"{'removed' if removed else 'there was no'} suppression of {args.check} on {args.resource}")
    elif args.action == "suppressions":
        items = astore.suppressions(int(now * 1000))
        base.show(
            args,
            {"suppressions": items},
            ("CHECK", "RESOURCE", "UNTIL", "DESCRIPTION"),
            [
                (
                    s["checkName"],
                    s["resourceKey"],
                    "indefinitely" if s["suppressIndefinitely"] else base.when(s["expirationDate"]),
                    s["description"],
                )
                for s in items
            ],
            "no suppressions",
        )
    elif args.action == "schedule":
        _schedule(base, args, astore, now)
    elif args.action == "mitigate":
        alerts = _alerts(_config(args.config)) if args.config else None
        done = mitigate(
            astore,
            args.task,
            args.check,
            args.mitigation,
            args.apply,
            args.group,
            alerts,
            args.broker_pid,
            int(now * 1000),
        )
        if alerts:
            alerts.close(5.0)
        base.show(
            args,
            {"actions": done},
            ("THING", "ACTION", "OUTCOME", "DETAIL"),
            [(d["thingName"], d["action"]["type"], d["outcome"], d["detail"]) for d in done],
            "nothing done",
        )
    return 0


def _schedule(base, args, astore: AuditStore, now: float) -> None:
    if args.verb == "create":
        doc = schedules.create(
            astore,
            args.name,
            args.frequency,
            args.day_of_week,
            args.day_of_month,
            args.time,
            args.check,
            int(now * 1000),
        )
        print(
            f"created scheduled audit {doc['scheduledAuditName']} ({doc['frequency']}); "
            f"next run {base.when(doc['nextRunTime'])}"
        )
    elif args.verb == "list":
        items = astore.schedules()
        base.show(
            args,
            {"scheduledAudits": items},
            ("NAME", "FREQUENCY", "DAY", "TIME", "CHECKS", "NEXT RUN", "LAST RUN"),
            [
                (
                    s["scheduledAuditName"],
                    s["frequency"],
                    s.get("dayOfWeek") or s.get("dayOfMonth"),
                    s["timeOfDay"],
                    ",".join(s["targetCheckNames"]) or "(enabled)",
                    base.when(s["nextRunTime"]),
                    base.when(s["lastRunTime"]),
                )
                for s in items
            ],
            "no scheduled audits",
        )
    else:
        astore.delete_schedule(args.name)
        print(f"deleted scheduled audit {args.name}")


def _print_task(base, task) -> None:
    stats = task["taskStatistics"]
    print(
        f"audit task {task['taskId']} ({task['taskType']}): {task['taskStatus']}; {stats['totalChecks']} checks, "
        f"{stats['nonCompliantChecks']} non-compliant, {stats['failedChecks']} failed"
    )
    print(
        base.table(
            ("CHECK", "STATUS", "RESOURCES", "NON-COMPLIANT", "SUPPRESSED", "NOTE"),
            [
                (
                    name,
                    d["checkRunStatus"],
                    d["totalResourcesCount"],
                    d["nonCompliantResourcesCount"],
                    d["suppressedNonCompliantResourcesCount"],
                    d.get("message"),
                )
                for name, d in task["auditDetails"].items()
            ],
        )
    )


def _resource_text(finding) -> str:
    from garrison.detect.audit.checks import resource_key

    resource = finding["nonCompliantResource"]
    return f"{resource['resourceType']} {resource_key(resource['resourceIdentifier'])}"


def _print_findings(base, findings: List[dict]) -> None:
    if not findings:
        print("no findings")
        return
    print(
        base.table(
            ("CHECK", "SEVERITY", "RESOURCE", "REASON", "SUPPRESSED"),
            [
                (
                    f["checkName"],
                    f["severity"],
                    _resource_text(f),
                    f["reasonForNonCompliance"],
                    "yes" if f["isSuppressed"] else "",
                )
                for f in findings
            ],
        )
    )
