"""`garrison-detect`: run the detect engine and manage its state.

    garrison-detect serve --broker mqtt://HOST:PORT --db PATH [--config FILE] [--min-report-interval S]
    garrison-detect serve --nats nats://A,nats://B,... --db postgresql://... [--worker-index I --workers N]
    garrison-detect nats-setup --nats URLS --partitions P [--replicas 3]
    garrison-detect profiles apply FILE [--attach all|group:NAME|thing:NAME]
    garrison-detect profiles list | show NAME | delete NAME | attach NAME TARGET | detach NAME TARGET
    garrison-detect violations list [--active] [--thing T] [--json]
    garrison-detect violations verify ID STATE [--description TEXT]
    garrison-detect violations events [--thing T] [--json]
    garrison-detect things list | add NAME | delete NAME
    garrison-detect groups create NAME | delete NAME | add GROUP THING | remove GROUP THING | list
    garrison-detect actions list
    garrison-detect ml summaries [--profile P] [--behavior B] [--thing T] [--config FILE] [--json]
    garrison-detect profiles sync DIR | validate FILE | for-target TARGET;  dead-letters;  metrics values ...;
    garrison-detect dimensions create|update|list|describe|delete ...
    garrison-detect audit run|checks|tasks|findings|suppress|schedule|mitigate ...   (see audit --help)
    garrison-detect respond quarantine|release|disable|enable|run-command|reconfigure THING ...
    garrison-detect demo ... | pki ... | broker-config ...   (each with its own --help)

Every command but `demo` works on the SQLite file given by --db (default $GARRISON_DB, else
./garrison-detect.db); WAL mode lets them run while `serve` uses the same file. A postgresql://
URL as --db uses PostgreSQL instead (the scale-out deployment: docs/scale-out.md). --json prints
AWS-shaped records; otherwise a table. Bad input: one line on stderr, exit status 2.

This module only assembles the parser and dispatches: each command group is a module of this
package with `add_parser(sub, db_parent)` that sets `func` (the audit's lives in
garrison.detect.audit.cli); a new group adds its module to COMMAND_GROUPS.
"""

import argparse
import importlib
import logging
import os
import sys
from typing import Optional, Sequence

from garrison.detect.cli import ops
from garrison.detect.cli.common import DB_ENV, DEFAULT_DB, EXIT_USAGE, PROG, Parser, UsageError

# the modules whose add_parser(sub, db_parent) adds a command group, in --help's order
COMMAND_GROUPS = (
    "garrison.detect.cli.serve",
    "garrison.detect.cli.profiles",
    "garrison.detect.cli.violations",
    "garrison.detect.cli.things",
    "garrison.detect.cli.deadletters",
    "garrison.detect.cli.groups",
    "garrison.detect.cli.actions",
    "garrison.detect.cli.ml",
    "garrison.detect.audit.cli",
    "garrison.detect.cli.respond",
    "garrison.detect.cli.metrics",
    "garrison.detect.cli.dimensions",
)


def build_parser() -> argparse.ArgumentParser:
    db_help = f"SQLite database, or a postgresql:// URL (default ${DB_ENV} or ./{DEFAULT_DB})"
    parser = Parser(
        prog=PROG,
        description="Garrison detect engine: judge Device Defender reports against "
        "security profiles, keep violations, alert and act.",
    )
    parser.add_argument("--db", default=os.environ.get(DB_ENV) or DEFAULT_DB, help=db_help)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # --db is accepted anywhere on the line: `garrison-detect violations list --db x.db` too
    db_anywhere = argparse.ArgumentParser(add_help=False)
    db_anywhere.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMAND_GROUPS:
        importlib.import_module(name).add_parser(sub, db_anywhere)
    ops.add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from garrison.detect.config import ConfigError
    from garrison.detect.judge.profiles import ProfileError
    from garrison.detect.respond.actions import ActionError
    from garrison.detect.respond.alerts import AlertConfigError
    from garrison.detect.service import ServiceError
    from garrison.detect.state.store import StoreError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in ops.DELEGATED:  # everything after the name is the module's own
        return ops.run(argparse.Namespace(command=argv[0], rest=argv[1:]))
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return args.func(args)
    except (UsageError, ServiceError, StoreError, ProfileError, ConfigError, ActionError, AlertConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    except ValueError as exc:  # e.g. a bad broker URL, an unreadable token file
        print(f"{PROG}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(
            f"{PROG}: {exc.strerror or exc}{': ' + exc.filename if getattr(exc, 'filename', None) else ''}",
            file=sys.stderr,
        )
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
