"""Mitigation actions: what the engine does to a thing when a behavior raises (or ends) an alarm.

The one kind of action AWS's Device Defender mitigations offer that makes sense without the
cloud is moving the thing into a thing group: a "quarantine" group can carry its own, stricter
security profile, and other systems (the broker's ACLs, a provisioning service) can act on
membership. So:

  add-thing-to-group       {"type": "add-thing-to-group", "group": "quarantine"}
  remove-thing-from-group  {"type": "remove-thing-from-group", "group": "quarantine"}
  quarantine / release     {"type": "quarantine"}: on the broker, reports and replies only (release undoes it)
  disable / enable         {"type": "disable"}: on the broker, disconnected and no rights at all; its
                           certificate revoked too where the engine knows the PKI (respond.revocation)
  run-command              {"type": "run-command", "command": ["/usr/local/bin/ticket", "--high"],
                            "timeout_seconds": 10}: the event as JSON on standard input, no shell
  reconfigure              {"type": "reconfigure", "request": {"request": "report-every", "seconds": 30,
                            "for_seconds": 600}}: a request on the thing's control topic

Group actions change the store inside the event's transaction. The others reach outside (the
broker, a process, the device), so inside the transaction they are only written to the log as
`pending`, durably with the event; the runner (garrison.detect.respond.runner) carries them out
after the commit and records the outcome (docs/actions.md).

Rules are keyed "<profile>/<behavior>" (either part may be "*") in the engine config, run on
`in-alarm` unless `"on"` names another event type (e.g. release on "alarm-cleared"), and
every execution, real or dry run, is written to the audit log (store table action_log, CLI
`garrison-detect actions list`) in the same transaction as the event that caused it. In dry-run
mode (engine-wide `dry_run = true`, or `"dry_run": true` on one rule) nothing changes: the log
says what would have been done.
"""

import logging
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from garrison.detect.state.store import Store, StoreError
from garrison.detect.respond.violations import EVENT_TYPES, IN_ALARM, Event
from garrison.wire.control import ControlRequestError, check_request

log = logging.getLogger("garrison.actions")

GROUP_TYPES = ("add-thing-to-group", "remove-thing-from-group")
BROKER_TYPES = ("quarantine", "release", "disable", "enable")
RUN_COMMAND, RECONFIGURE = "run-command", "reconfigure"
ACTION_TYPES = GROUP_TYPES + BROKER_TYPES + (RUN_COMMAND, RECONFIGURE)
DEFERRED_TYPES = BROKER_TYPES + (RUN_COMMAND, RECONFIGURE)
PENDING = "pending"
MAX_COMMAND_TIMEOUT_S = 300
DEFAULT_COMMAND_TIMEOUT_S = 10


class ActionError(ValueError):
    """An action rule that cannot be run (bad config)."""


@dataclass(frozen=True)
class Action:
    type: str
    group: str = ""
    on: str = IN_ALARM
    dry_run: bool = False
    params: str = field(default="{}", compare=False)  # JSON: command, timeout_seconds, request

    @property
    def options(self) -> Dict[str, Any]:
        return json.loads(self.params)

    def to_dict(self) -> Dict[str, Any]:
        out = {"type": self.type, "on": self.on}
        if self.type in GROUP_TYPES:
            out["group"] = self.group
        out.update(self.options)
        return out


def parse_action(key: str, doc: Any) -> Action:
    """One rule from the config; ActionError names what is wrong."""
    where = f"actions.{key!r}"
    profile, sep, behavior = key.partition("/")
    if not sep or not profile or not behavior:
        raise ActionError(f'{where}: keys are "<profile>/<behavior>" (either may be "*")')
    if not isinstance(doc, Mapping):
        raise ActionError(f'{where}: must be a table such as {{type = "add-thing-to-group", group = "quarantine"}}')
    kind = doc.get("type")
    if kind not in ACTION_TYPES:
        raise ActionError(f"{where}: type must be one of {', '.join(ACTION_TYPES)}, got {kind!r}")
    own = (
        {"group"}
        if kind in GROUP_TYPES
        else {"command", "timeout_seconds"}
        if kind == RUN_COMMAND
        else {"request"}
        if kind == RECONFIGURE
        else set()
    )
    unknown = set(doc) - {"type", "on", "dry_run"} - own
    if unknown:
        raise ActionError(f"{where}: unknown field {sorted(unknown)[0]!r} for {kind}")
    group, params = "", {}
    if kind in GROUP_TYPES:
        named = doc.get("group")
        if not isinstance(named, str) or not named:
            raise ActionError(f"{where}: needs a group name")
        group = named
    elif kind == RUN_COMMAND:
        params = _command_params(where, doc)
    elif kind == RECONFIGURE:
        try:
            params = {"request": check_request(doc.get("request"))}
        except ControlRequestError as exc:
            raise ActionError(f"{where}: request: {exc}") from None
    on = doc.get("on", IN_ALARM)
    if on not in EVENT_TYPES:
        raise ActionError(f"{where}: on must be one of {', '.join(EVENT_TYPES)}, got {on!r}")
    dry_run = doc.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ActionError(f"{where}: dry_run must be true or false")
    return Action(kind, group, on, dry_run, json.dumps(params, sort_keys=True))


def _command_params(where: str, doc: Mapping[str, Any]) -> Dict[str, Any]:
    """An argv list (no shell) whose program is an absolute path, and a bounded timeout."""
    argv = doc.get("command")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and "\0" not in a for a in argv)
        or len(argv) > 64
    ):
        raise ActionError(f"{where}: command must be a list of 1-64 strings, the program first (no shell)")
    if not os.path.isabs(argv[0]):
        raise ActionError(f"{where}: the command's program must be an absolute path, got {argv[0]!r}")
    timeout = doc.get("timeout_seconds", DEFAULT_COMMAND_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_COMMAND_TIMEOUT_S:
        raise ActionError(f"{where}: timeout_seconds must be in (0, {MAX_COMMAND_TIMEOUT_S}]")
    return {"command": list(argv), "timeout_seconds": timeout}


class Actions:
    """The configured rules; `run` executes the ones an event triggers."""

    def __init__(self, rules: Optional[Mapping[str, Any]] = None, dry_run: bool = False):
        self.dry_run = dry_run
        self.rules: Dict[str, List[Action]] = {}
        for key, doc in (rules or {}).items():
            docs = doc if isinstance(doc, list) else [doc]
            self.rules[key] = [parse_action(key, item) for item in docs]

    def groups(self) -> List[str]:
        """Groups the rules name (the engine creates them at start)."""
        return sorted({a.group for actions in self.rules.values() for a in actions if a.type in GROUP_TYPES})

    def matching(self, event: Event) -> List[Action]:
        behavior = event.behavior.get("name", "")
        keys = (f"{event.profile}/{behavior}", f"{event.profile}/*", f"*/{behavior}", "*/*")
        return [a for key in keys for a in self.rules.get(key, ()) if a.on == event.event_type]

    def run(self, store: Store, event: Event, now_ms: int) -> List[Dict[str, Any]]:
        """Run the actions `event` triggers, inside the caller's transaction; return audit entries."""
        done = []
        for action in self.matching(event):
            done.append(
                execute(
                    store,
                    action,
                    event.thing,
                    now_ms,
                    dry_run=self.dry_run or action.dry_run,
                    violation_id=event.violation_id,
                    profile=event.profile,
                    behavior=event.behavior.get("name"),
                    event=event.to_record(),
                )
            )
        return done


def execute(
    store: Store,
    action: Action,
    thing: str,
    now_ms: int,
    dry_run: bool = False,
    violation_id: Optional[str] = None,
    profile: Optional[str] = None,
    behavior: Optional[str] = None,
    event: Optional[Dict[str, Any]] = None,
    by: Optional[str] = None,
) -> Dict[str, Any]:
    """Run one action on `thing` (or say what it would do) and write it to the audit log.
    `by`: who asked, when not a rule (an operator through the CLI or the API)."""
    if action.type in DEFERRED_TYPES:
        return _defer(store, action, thing, now_ms, dry_run, violation_id, profile, behavior, event, by)
    verb = "add" if action.type == "add-thing-to-group" else "remove"
    preposition = "to" if verb == "add" else "from"
    what = f"{verb} thing {thing} {preposition} group {action.group}"
    if dry_run:
        outcome, detail = "dry-run", f"would {what}"
    else:
        try:
            with store.transaction():
                if verb == "add":
                    store.create_group(action.group, now_ms)  # a quarantine group exists when needed
                    changed = store.add_to_group(action.group, thing, now_ms)
                else:
                    changed = store.group_exists(action.group) and store.remove_from_group(action.group, thing)
            outcome, detail = ("done" if changed else "no-change"), what
        except StoreError as exc:
            outcome, detail = "failed", f"{what}: {exc}"
    log.warning("mitigation for violation %s (%s/%s): %s: %s", violation_id, profile, behavior, outcome, detail)
    logged = dict(action.to_dict(), **({"by": by} if by else {}))
    return _log(store, now_ms, thing, logged, dry_run, outcome, detail, violation_id, profile, behavior)


def _defer(
    store: Store,
    action: Action,
    thing: str,
    now_ms: int,
    dry_run: bool,
    violation_id: Optional[str],
    profile: Optional[str],
    behavior: Optional[str],
    event: Optional[Dict[str, Any]],
    by: Optional[str],
) -> Dict[str, Any]:
    """Log an action that reaches outside the store as pending (the runner does it after the commit)."""
    logged = action.to_dict()
    if by:
        logged["by"] = by
    if event is not None and action.type == RUN_COMMAND:
        logged["event"] = event  # what the command receives, kept with the request
    what = describe(action, thing)
    outcome, detail = ("dry-run", f"would {what}") if dry_run else (PENDING, what)
    log.warning(
        "mitigation for %s (%s/%s, by %s): %s: %s",
        violation_id or "no violation",
        profile,
        behavior,
        by or "rule",
        outcome,
        detail,
    )
    return _log(store, now_ms, thing, logged, dry_run, outcome, detail, violation_id, profile, behavior)


def _log(
    store: Store,
    now_ms: int,
    thing: str,
    logged: Dict[str, Any],
    dry_run: bool,
    outcome: str,
    detail: str,
    violation_id: Optional[str],
    profile: Optional[str],
    behavior: Optional[str],
) -> Dict[str, Any]:
    """Write one entry to the actions log; the record the CLI and the API return for it."""
    seq = store.log_action(now_ms, thing, logged, dry_run, outcome, detail, violation_id, profile, behavior)
    return {
        "seq": seq,
        "thingName": thing,
        "action": logged,
        "dryRun": dry_run,
        "outcome": outcome,
        "detail": detail,
        "violationId": violation_id,
    }


def describe(action: Action, thing: str) -> str:
    if action.type == RUN_COMMAND:
        return f"run {action.options['command'][0]} for thing {thing}"
    if action.type == RECONFIGURE:
        return f"send thing {thing} the request {json.dumps(action.options['request'], sort_keys=True)}"
    return f"{action.type} thing {thing} on the broker"
