"""`garrison-detect respond ...`: an operator's responses, and the runner `serve` starts.

    garrison-detect respond quarantine THING [--dry-run] [--wait SECONDS]
    garrison-detect respond release|disable|enable THING ...
    garrison-detect respond run-command THING [--timeout S] -- /path/to/program ARG...
    garrison-detect respond reconfigure THING (--now | --every S --for S | --collector NAME --on/--off)

Each writes a `pending` entry into the actions log of the database (who: `cli:USER`), which the
running `serve` carries out within about a second over its own broker connection (a second
connection with the engine's certificate would take over the first); `--wait` waits for the
outcome. `garrison-detect actions list` shows every entry.
"""

import argparse
import getpass
import json
import time

from garrison.detect.clock import from_environment
from garrison.detect.state.store import Store

WAIT_STEP_S = 0.2


def add_parser(sub, db_parent) -> None:
    """Add `respond` to the `garrison-detect` subparsers `sub`."""
    from garrison.detect.cli import common

    common.add_with_helpers(sub, db_parent, add_commands)


def add_commands(command, action_of, action) -> None:
    """Hook into detect.cli's parser (its `command`, `actions_of` and `action` helpers)."""
    respond = command(
        "respond",
        "Responses on one thing: quarantine, release, disable, enable (on the broker), "
        "run-command, reconfigure (docs/actions.md). `serve` carries them out.",
    )
    sub = action_of(respond)

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        p = action(sub, name, text)
        p.add_argument("thing")
        p.add_argument("--dry-run", action="store_true", help="only log what would be done")
        p.add_argument(
            "--wait",
            type=float,
            default=0,
            metavar="SECONDS",
            help="wait this long for serve to carry it out and print the outcome",
        )
        p.add_argument("--json", action="store_true")
        return p

    for kind, text in (
        ("quarantine", "only its reports and replies from now on (dynamic security plugin)"),
        ("release", "give a quarantined thing back its previous rights"),
        (
            "disable",
            "disconnect it and revoke its certificate (with [audit] pki_dir and broker_config in serve's "
            "config), so its reconnect is refused; without them it may reconnect, with no rights",
        ),
        ("enable", "undo disable on the broker (a revoked certificate stays revoked)"),
    ):
        verb(kind, text)
    p = verb("run-command", "run a program (no shell) with a JSON event for the thing on stdin")
    p.add_argument("--timeout", type=float, default=10, help="seconds before it is killed (default 10, at most 300)")
    p.add_argument("argv", nargs="+", metavar="PROGRAM", help="-- /absolute/program ARG... (after --)")
    p = verb("reconfigure", "send a bounded request on the thing's control topic")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--now", action="store_true", help="report now")
    what.add_argument("--every", type=int, metavar="SECONDS", help="report every SECONDS (with --for)")
    what.add_argument("--default", action="store_true", help="back to the agent's configured interval")
    what.add_argument("--collector", metavar="NAME", help="enable (--on) or disable (--off) a collector")
    p.add_argument("--for", dest="for_seconds", type=int, metavar="SECONDS", help="how long --every lasts")
    p.add_argument("--on", dest="enabled", action="store_true", default=None)
    p.add_argument("--off", dest="enabled", action="store_false")
    respond.set_defaults(func=cmd_respond)


def action_doc(args) -> dict:
    if args.action == "run-command":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        return {"type": "run-command", "command": argv, "timeout_seconds": args.timeout}
    if args.action == "reconfigure":
        if args.now:
            request = {"request": "report-now"}
        elif args.default:
            request = {"request": "report-default"}
        elif args.every is not None:
            request = {"request": "report-every", "seconds": args.every, "for_seconds": args.for_seconds}
        else:
            request = {"request": "collector", "name": args.collector, "enabled": args.enabled}
        return {"type": "reconfigure", "request": request}
    return {"type": args.action}


def cmd_respond(args) -> int:
    from garrison.detect.engine import Engine

    store = Store(args.db)
    engine = Engine(store, from_environment())
    entry = engine.respond(args.thing, action_doc(args), by=f"cli:{getpass.getuser()}", dry_run=args.dry_run)
    deadline = time.monotonic() + args.wait
    while store.action_outcome(entry["seq"]) in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(WAIT_STEP_S)
    outcome = store.action_outcome(entry["seq"])
    detail = next((e["detail"] for e in store.list_actions(args.thing) if e["seq"] == entry["seq"]), "")
    if args.json:
        print(json.dumps(dict(entry, outcome=outcome, detail=detail)))
    else:
        print(
            f"action {entry['seq']}: {outcome}: {detail}"
            + (" (serve carries it out; see `garrison-detect actions list`)" if outcome == "pending" else "")
        )
    return 1 if outcome == "failed" else 0
