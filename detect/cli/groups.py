"""`garrison-detect groups create|delete|add|remove|list`: thing groups."""

from garrison.detect.cli.common import action, actions_of, command, engine_on, show, value


def add_parser(sub, db_parent) -> None:
    groups = command(sub, db_parent, "groups", "Thing groups (profiles can be attached to a group).")
    gsub = actions_of(groups)
    p = action(gsub, db_parent, "create", "create a group")
    p.add_argument("name")
    p.add_argument("--description", default="")
    action(gsub, db_parent, "delete", "delete a group").add_argument("name")
    for verb in ("add", "remove"):
        p = action(gsub, db_parent, verb, f"{verb} a thing to/from a group")
        p.add_argument("group")
        p.add_argument("thing")
    action(gsub, db_parent, "list", "list groups and members").add_argument("--json", action="store_true")
    groups.set_defaults(func=run)


def run(args) -> int:
    engine = engine_on(args.db)
    if args.action == "list":
        groups = engine.list_groups()
        show(
            args,
            groups,
            ("GROUP", "THINGS", "MEMBERS"),
            [(g["groupName"], len(g["things"]), value(g["things"])) for g in groups],
            "no thing groups",
        )
    elif args.action == "create":
        created = engine.create_group(args.name, args.description)
        print(f"{'created' if created else 'already exists:'} thing group {args.name}")
    elif args.action == "delete":
        engine.delete_group(args.name)
        print(f"deleted thing group {args.name}")
    elif args.action == "add":
        added = engine.add_to_group(args.group, args.thing)
        print(f"{'added' if added else 'already in the group:'} {args.thing} to {args.group}")
    elif args.action == "remove":
        removed = engine.remove_from_group(args.group, args.thing)
        print(f"{'removed' if removed else 'was not in the group:'} {args.thing} from {args.group}")
    return 0
