"""`garrison-detect things list|add|delete`: the registry of things."""

from garrison.detect.cli.common import action, actions_of, command, engine_on, show, when


def add_parser(sub, db_parent) -> None:
    things = command(sub, db_parent, "things", "Things (registered on their first report, or with `add`).")
    tsub = actions_of(things)
    action(tsub, db_parent, "list", "list things").add_argument("--json", action="store_true")
    action(tsub, db_parent, "add", "pre-register a thing (strict mode)").add_argument("name")
    action(tsub, db_parent, "delete", "forget a thing").add_argument("name")
    things.set_defaults(func=run)


def run(args) -> int:
    engine = engine_on(args.db)
    if args.action == "list":
        things = engine.list_things()
        show(
            args,
            things,
            ("THING", "REPORTS", "LAST REPORT", "GROUPS"),
            [(t["thingName"], t["reports"], when(t["lastReportTime"]), ", ".join(t["groups"])) for t in things],
            "no things",
        )
    elif args.action == "add":
        created = engine.add_thing(args.name)
        print(f"{'registered' if created else 'already registered:'} thing {args.name}")
    elif args.action == "delete":
        engine.delete_thing(args.name)
        print(f"deleted thing {args.name}")
    return 0
