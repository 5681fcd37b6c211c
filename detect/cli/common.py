"""What every `garrison-detect` command module shares: the usage error, the one-line-error parser,
the helpers that add a command and its actions, the engine on --db, and the table/JSON output."""

import argparse
import json
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from garrison.wire.values import escape_controls

PROG = "garrison-detect"
DEFAULT_DB = "garrison-detect.db"
DB_ENV = "GARRISON_DB"
TOKEN_ENV = "GARRISON_API_TOKEN"
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, not argparse's usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------- parser helpers


def command(sub, db_parent: argparse.ArgumentParser, name: str, help_text: str) -> argparse.ArgumentParser:
    """Add the command `name` (which accepts --db anywhere on the line) to the subparsers `sub`."""
    return sub.add_parser(name, help=help_text, description=help_text, parents=[db_parent])


def actions_of(command_parser: argparse.ArgumentParser):
    """The required ACTION subparsers of a command (`profiles list`, `things add`, ...)."""
    actions = command_parser.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    return actions


def action(actions, db_parent: argparse.ArgumentParser, name: str, help_text: str) -> argparse.ArgumentParser:
    return actions.add_parser(name, help=help_text, parents=[db_parent])


def add_with_helpers(sub, db_parent: argparse.ArgumentParser, add_commands) -> None:
    """For command modules written as `add_commands(command, actions_of, action)` (dimensions,
    metrics, respond): hand them these helpers bound to `sub` and `db_parent`."""
    add_commands(
        lambda name, text: command(sub, db_parent, name, text),
        actions_of,
        lambda actions, name, text: action(actions, db_parent, name, text),
    )


# ---------------------------------------------------------------------------------- the engine


def engine_on(db: str, config=None, clock=None):
    """The engine facade on the SQLite file `db` (the wall clock unless told)."""
    from garrison.detect.clock import SystemClock
    from garrison.detect.engine import Engine
    from garrison.detect.state.store import Store

    return Engine(Store(db), clock or SystemClock(), config)


# ---------------------------------------------------------------------------------- output


def when(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def value(item: Any) -> str:
    if item is None:
        return "-"
    if isinstance(item, dict) and len(item) == 1:
        item = next(iter(item.values()))
    text = ",".join(map(str, item)) if isinstance(item, list) else str(item)
    return text if len(text) <= 40 else text[:37] + "..."


def percent(number: Optional[float]) -> str:
    return "-" if number is None else f"{number:g}%"


def _cell(value: Any) -> str:
    """A cell as text, its control characters escaped: devices choose many of the strings shown
    (a process name, a custom metric's strings), and a raw ESC or CR would drive the terminal."""
    return escape_controls(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [["-" if c is None or c == "" else _cell(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def show(args, records: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    """`records` as JSON with --json, else `rows` as a table (or `empty` when there are none)."""
    if getattr(args, "json", False):
        print(json.dumps(records, indent=2))
    elif rows:
        print(table(headers, rows))
    else:
        print(empty)
