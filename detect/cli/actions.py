"""`garrison-detect actions list`: the audit log of mitigation actions."""

from garrison.detect.cli.common import action, actions_of, command, engine_on, show, when


def add_parser(sub, db_parent) -> None:
    actions = command(sub, db_parent, "actions", "The audit log of mitigation actions.")
    asub = actions_of(actions)
    p = action(asub, db_parent, "list", "list action executions")
    p.add_argument("--thing")
    p.add_argument("--json", action="store_true")
    actions.set_defaults(func=run)


def run(args) -> int:
    entries = engine_on(args.db).list_actions(args.thing)
    show(
        args,
        entries,
        ("TIME", "THING", "ACTION", "GROUP", "OUTCOME", "VIOLATION ID"),
        [
            (
                when(e["time"]),
                e["thingName"],
                e["action"]["type"],
                e["action"].get("group"),
                e["outcome"],
                e["violationId"],
            )
            for e in entries
        ],
        "no mitigation actions",
    )
    return 0
