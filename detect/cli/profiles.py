"""`garrison-detect profiles apply|list|show|delete|attach|detach`: security profiles."""

import json

from garrison.detect.cli.cloud import warn_unsourced
from garrison.detect.cli.common import action, actions_of, command, engine_on, show


def add_parser(sub, db_parent) -> None:
    profiles = command(sub, db_parent, "profiles", "Security profiles (AWS CreateSecurityProfile JSON).")
    psub = actions_of(profiles)
    p = action(psub, db_parent, "apply", "create or replace a profile from a JSON file")
    p.add_argument("file")
    p.add_argument("--attach", metavar="TARGET", help="all | group:NAME | thing:NAME")
    p = action(psub, db_parent, "list", "list profiles")
    p.add_argument("--json", action="store_true")
    action(psub, db_parent, "show", "show a profile, its targets and statuses").add_argument("name")
    action(psub, db_parent, "delete", "delete a profile (its violations are invalidated)").add_argument("name")
    for verb in ("attach", "detach"):
        p = action(psub, db_parent, verb, f"{verb} a profile to/from all | group:NAME | thing:NAME")
        p.add_argument("name")
        p.add_argument("target")
    profiles.set_defaults(func=run)
    from garrison.detect.cli import profiles_code  # sync, validate, for-target

    profiles_code.add_actions(psub, lambda actions, name, text: action(actions, db_parent, name, text))


def run(args) -> int:
    engine = engine_on(args.db)
    if args.action == "apply":
        profile, created = engine.apply_profile(args.file, attach=args.attach)
        targets = engine.profile_targets(profile.name)
        print(
            f"{'created' if created else 'updated'} security profile {profile.name} "
            f"({len(profile.behaviors)} behaviors; attached to {', '.join(targets) or 'nothing yet'})"
        )
        warn_unsourced(engine, profile)
    elif args.action == "list":
        items = engine.list_profiles()
        show(
            args,
            items,
            ("PROFILE", "BEHAVIORS", "TARGETS"),
            [(p["securityProfileName"], len(p["behaviors"]), ", ".join(p["targets"])) for p in items],
            "no security profiles",
        )
    elif args.action == "show":
        print(json.dumps(engine.describe_profile(args.name), indent=2))
    elif args.action == "delete":
        engine.delete_profile(args.name)
        print(f"deleted security profile {args.name}")
    elif args.action == "attach":
        done = engine.attach(args.name, args.target)
        print(f"{'attached' if done else 'already attached:'} {args.name} to {args.target}")
    elif args.action == "detach":
        done = engine.detach(args.name, args.target)
        print(f"{'detached' if done else 'was not attached:'} {args.name} from {args.target}")
    return 0
