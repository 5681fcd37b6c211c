"""Mitigation actions: what the engine does to a thing when a behavior raises (or ends) an alarm.

The one kind of action AWS's Device Defender mitigations offer that makes sense without the
cloud is moving the thing into a thing group: a "quarantine" group can carry its own, stricter
security profile, and other systems (the broker's ACLs, a provisioning service) can act on
membership. So:

  add-thing-to-group       {"type": "add-thing-to-group", "group": "quarantine"}
  remove-thing-from-group  {"type": "remove-thing-from-group", "group": "quarantine"}

Rules are keyed "<profile>/<behavior>" (either part may be "*") in the engine config, run on
`in-alarm` unless `"on"` names another event type (e.g. release on "alarm-cleared"), and
every execution, real or dry run, is written to the audit log (store table action_log, CLI
`garrison-detect actions list`) in the same transaction as the event that caused it. In dry-run
mode (engine-wide `dry_run = true`, or `"dry_run": true` on one rule) nothing changes: the log
says what would have been done.
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from garrison.detect.state.store import Store, StoreError
from garrison.detect.respond.violations import EVENT_TYPES, IN_ALARM, Event

log = logging.getLogger("garrison.actions")

ACTION_TYPES = ("add-thing-to-group", "remove-thing-from-group")


class ActionError(ValueError):
    """An action rule that cannot be run (bad config)."""


@dataclass(frozen=True)
class Action:
    type: str
    group: str
    on: str = IN_ALARM
    dry_run: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"type": self.type, "group": self.group, "on": self.on}


def parse_action(key: str, doc: Any) -> Action:
    """One rule from the config; ActionError names what is wrong."""
    where = f"actions.{key!r}"
    profile, sep, behavior = key.partition("/")
    if not sep or not profile or not behavior:
        raise ActionError(f"{where}: keys are \"<profile>/<behavior>\" (either may be \"*\")")
    if not isinstance(doc, Mapping):
        raise ActionError(f"{where}: must be a table such as {{type = \"add-thing-to-group\", group = \"quarantine\"}}")
    unknown = set(doc) - {"type", "group", "on", "dry_run"}
    if unknown:
        raise ActionError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    kind = doc.get("type")
    if kind not in ACTION_TYPES:
        raise ActionError(f"{where}: type must be one of {', '.join(ACTION_TYPES)}, got {kind!r}")
    group = doc.get("group")
    if not isinstance(group, str) or not group:
        raise ActionError(f"{where}: needs a group name")
    on = doc.get("on", IN_ALARM)
    if on not in EVENT_TYPES:
        raise ActionError(f"{where}: on must be one of {', '.join(EVENT_TYPES)}, got {on!r}")
    dry_run = doc.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ActionError(f"{where}: dry_run must be true or false")
    return Action(kind, group, on, dry_run)


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
        return sorted({a.group for actions in self.rules.values() for a in actions})

    def matching(self, event: Event) -> List[Action]:
        behavior = event.behavior.get("name", "")
        keys = (f"{event.profile}/{behavior}", f"{event.profile}/*", f"*/{behavior}", "*/*")
        return [a for key in keys for a in self.rules.get(key, ()) if a.on == event.event_type]

    def run(self, store: Store, event: Event, now_ms: int) -> List[Dict[str, Any]]:
        """Run the actions `event` triggers, inside the caller's transaction; return audit entries."""
        done = []
        for action in self.matching(event):
            done.append(execute(store, action, event.thing, now_ms, dry_run=self.dry_run or action.dry_run,
                                violation_id=event.violation_id, profile=event.profile,
                                behavior=event.behavior.get("name")))
        return done


def execute(store: Store, action: Action, thing: str, now_ms: int, dry_run: bool = False,
            violation_id: Optional[str] = None, profile: Optional[str] = None,
            behavior: Optional[str] = None) -> Dict[str, Any]:
    """Run one action on `thing` (or say what it would do) and write it to the audit log."""
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
    store.log_action(now_ms, thing, action.to_dict(), dry_run, outcome, detail, violation_id, profile, behavior)
    return {"thingName": thing, "action": action.to_dict(), "dryRun": dry_run, "outcome": outcome,
            "detail": detail, "violationId": violation_id}
