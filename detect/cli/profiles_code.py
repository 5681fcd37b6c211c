"""`garrison-detect profiles sync | validate | for-target`: profiles as code, and two AWS calls
(ValidateSecurityProfileBehaviors, ListSecurityProfilesForTarget)."""

import json
import sys
from typing import Any, Dict


def add_actions(psub, action) -> None:
    """Hook the actions into `profiles` (the helpers of detect.cli.build_parser)."""
    p = action(
        psub,
        "sync",
        "make the engine's profiles match the *.json files of DIR, targets included "
        '(a file\'s "targets": ["all", "group:NAME", "thing:NAME"]): prints the plan (create, update, '
        "detach, attach, delete) and applies it; re-running is a no-op",
    )
    p.add_argument("dir", help="directory of CreateSecurityProfile JSON files")
    p.add_argument("--prune", action="store_true", help="also delete profiles no file defines")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=cmd_sync)
    p = action(
        psub,
        "validate",
        "validate a profile's behaviors without storing anything "
        "(ValidateSecurityProfileBehaviors); exit 1 when invalid",
    )
    p.add_argument("file", help='a profile file, or {"behaviors": [...]}')
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)
    p = action(psub, "for-target", "profiles attached to a target (ListSecurityProfilesForTarget)")
    p.add_argument("target", help="all | group:NAME | thing:NAME")
    p.add_argument(
        "--recursive", action="store_true", help="for a thing, also profiles reaching it through all and its groups"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_for_target)


def cmd_sync(args) -> int:
    from garrison.detect.cli.common import engine_on
    from garrison.detect.cli.cloud import warn_unsourced
    from garrison.detect.judge.profiles import load_profile
    from garrison.detect.profilesync import read_dir

    engine = engine_on(args.db)
    wanted = [(doc, targets) for doc, targets, _ in read_dir(args.dir)]
    steps = engine.sync_profiles(wanted, prune=args.prune, dry_run=args.dry_run)
    for step in steps:
        print(("would " if args.dry_run else "") + str(step))
    if not steps:
        print(f"nothing to do: the engine matches {args.dir}")
    elif not args.dry_run:
        for doc, _ in wanted:
            warn_unsourced(engine, load_profile(doc))
    return 0


def _behaviors(path: str):
    with open(path) as handle:
        doc = json.load(handle)
    return doc.get("behaviors") if isinstance(doc, dict) else doc


def cmd_validate(args) -> int:
    from garrison.detect.cli.common import engine_on

    result: Dict[str, Any]
    try:
        behaviors = _behaviors(args.file)
    except ValueError as exc:
        result = {"valid": False, "validationErrors": [{"errorMessage": f"{args.file} is not valid JSON: {exc}"}]}
    else:
        result = engine_on(args.db).validate_behaviors(behaviors)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["valid"]:
        print(f"{args.file}: valid")
    else:
        for error in result["validationErrors"]:
            print(f"{args.file}: {error['errorMessage']}", file=sys.stderr)
    return 0 if result["valid"] else 1


def cmd_for_target(args) -> int:
    from garrison.detect.cli.common import engine_on

    result = engine_on(args.db).profiles_for_target(args.target, args.recursive)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    mappings = result["securityProfileTargetMappings"]
    if not mappings:
        print(f"no security profiles for {args.target}")
    for m in mappings:
        print(f"{m['securityProfileIdentifier']['name']}\t{m['target']['arn']}")
    return 0


def sync_configured(engine, configured) -> None:
    """`serve`'s [[profiles]] (file, attach): the same plan as `profiles sync`, with the file's
    targets plus `attach`; attachments made at run time (CLI, API) are left in place."""
    from garrison.detect.cli.cloud import warn_unsourced
    from garrison.detect.judge.profiles import load_profile
    from garrison.detect.profilesync import targets_of
    import logging

    log = logging.getLogger("garrison.cli")
    wanted = []
    for path, attach in configured:
        doc = load_profile(path).to_dict()
        targets = sorted(set(targets_of(doc, path)) | ({attach} if attach else set()))
        wanted.append((doc, targets))
    for step in engine.sync_profiles(wanted, detach=False):
        log.info("configured profiles: %s", step)
    for doc, _ in wanted:
        warn_unsourced(engine, load_profile(doc), to_stderr=False)
