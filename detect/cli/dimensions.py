"""`garrison-detect dimensions ...`: CreateDimension, UpdateDimension, ListDimensions,
DescribeDimension, DeleteDimension (type TOPIC_FILTER)."""

import json


def add_parser(sub, db_parent) -> None:
    """Add the command to the `garrison-detect` subparsers `sub`."""
    from garrison.detect.cli import common

    common.add_with_helpers(sub, db_parent, add_commands)


def add_commands(command, actions_of, action) -> None:
    dims = command(
        "dimensions",
        "Dimensions: named MQTT topic filters (+, #) that narrow a behavior's message "
        "and authorization metrics (metricDimension {dimensionName, operator IN | NOT_IN}).",
    )
    sub = actions_of(dims)
    for verb, text in (
        ("create", "create a dimension (CreateDimension)"),
        ("update", "replace a dimension's topic filters (UpdateDimension)"),
    ):
        p = action(sub, verb, text)
        p.add_argument("name")
        p.add_argument(
            "--value",
            action="append",
            required=True,
            metavar="TOPIC_FILTER",
            help="an MQTT topic filter, e.g. 'devices/+/debug' or 'admin/#' (1 to 5; repeat)",
        )
        if verb == "create":
            p.add_argument("--type", default="TOPIC_FILTER", choices=("TOPIC_FILTER",))
    action(sub, "list", "list dimension names (ListDimensions)").add_argument("--json", action="store_true")
    p = action(sub, "show", "a dimension's type and filters (DescribeDimension)")
    p.add_argument("name")
    action(sub, "delete", "delete a dimension no profile uses (DeleteDimension)").add_argument("name")
    dims.set_defaults(func=cmd_dimensions)


def cmd_dimensions(args) -> int:
    from garrison.detect.cli.common import engine_on

    engine = engine_on(args.db)
    if args.action == "create":
        engine.create_dimension(args.name, args.type, args.value)
        print(f"created dimension {args.name}: {', '.join(args.value)}")
    elif args.action == "update":
        engine.update_dimension(args.name, args.value)
        print(f"updated dimension {args.name}: {', '.join(args.value)}")
    elif args.action == "list":
        names = engine.list_dimensions()
        if args.json:
            print(json.dumps(names, indent=2))
        else:
            print("\n".join(names["dimensionNames"]) or "no dimensions")
    elif args.action == "show":
        print(json.dumps(engine.describe_dimension(args.name), indent=2))
    elif args.action == "delete":
        engine.delete_dimension(args.name)
        print(f"deleted dimension {args.name}")
    return 0
