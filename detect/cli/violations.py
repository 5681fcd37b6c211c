"""`garrison-detect violations list|events|verify`: violations and their events."""

import json

from garrison.detect.cli.common import action, actions_of, command, engine_on, show, value, when
from garrison.detect.respond.violations import VERIFICATION_STATES


def add_parser(sub, db_parent) -> None:
    viol = command(sub, db_parent, "violations", "Violations and their events.")
    vsub = actions_of(viol)
    p = action(vsub, db_parent, "list", "list violations (all episodes, or --active)")
    p.add_argument("--active", action="store_true", help="only active violations (ListActiveViolations)")
    p.add_argument("--thing")
    p.add_argument("--profile")
    p.add_argument("--json", action="store_true")
    p = action(vsub, db_parent, "events", "list violation events (ListViolationEvents)")
    p.add_argument("--thing")
    p.add_argument("--profile")
    p.add_argument("--since", type=float, metavar="EPOCH_SECONDS")
    p.add_argument("--until", type=float, metavar="EPOCH_SECONDS")
    p.add_argument("--json", action="store_true")
    p = action(vsub, db_parent, "verify", "set a violation's verification state")
    p.add_argument("id")
    p.add_argument("state", choices=VERIFICATION_STATES, metavar="STATE", help=" | ".join(VERIFICATION_STATES))
    p.add_argument("--description", help="why (up to 1000 characters)")
    p.add_argument("--json", action="store_true")
    viol.set_defaults(func=run)


def run(args) -> int:
    engine = engine_on(args.db)
    if args.action == "verify":
        record = engine.verify(args.id, args.state, args.description)
        if args.json:
            print(json.dumps(record, indent=2))
        else:
            print(f"violation {args.id}: {args.state}")
    elif args.action == "list":
        records = (
            engine.active_violations(args.thing, args.profile)
            if args.active
            else engine.all_violations(args.thing, args.profile)
        )
        show(
            args,
            records,
            ("VIOLATION ID", "THING", "PROFILE", "BEHAVIOR", "LAST VALUE", "STARTED", "STATUS", "VERIFICATION"),
            [
                (
                    r["violationId"],
                    r["thingName"],
                    r["securityProfileName"],
                    r["behavior"].get("name"),
                    value(r["lastViolationValue"]) + _explained(r),
                    when(r["violationStartTime"]),
                    "active" if r.get("active", True) else r.get("violationEndType"),
                    r["verificationState"],
                )
                for r in records
            ],
            "no active violations" if args.active else "no violations",
        )
    elif args.action == "events":
        records = engine.violation_events(args.thing, args.profile, args.since, args.until)
        show(
            args,
            records,
            ("TIME", "EVENT", "THING", "PROFILE", "BEHAVIOR", "VALUE", "VIOLATION ID"),
            [
                (
                    when(r["violationEventTime"]),
                    r["violationEventType"],
                    r["thingName"],
                    r["securityProfileName"],
                    r["behavior"].get("name"),
                    value(r["metricValue"]),
                    r["violationId"],
                )
                for r in records
            ],
            "no violation events",
        )
    return 0


def _explained(record) -> str:
    """The violation's explanation (the process behind a port, an ML model's reason), if any."""
    text = (record.get("violationEventAdditionalInfo") or {}).get("explanation")
    return f" ({text})" if isinstance(text, str) and text else ""
