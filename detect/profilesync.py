"""Profiles as code: a directory of CreateSecurityProfile files is the truth, targets included.

Each file may name its targets in a top-level `"targets": ["all", "group:cameras", "thing:gw-1"]`
(a Garrison field; AWS ignores unknown fields, and load_profile keeps it). `plan()` compares the
files with the engine's profiles and returns the steps that make the engine match them:
create, update, detach, attach, delete (delete only with prune); `apply()` runs them in one
transaction, so a failing step (a sixth profile on a target) changes nothing. Re-running a sync
that was applied plans nothing.

Also ValidateSecurityProfileBehaviors (`validate_behaviors`) and ListSecurityProfilesForTarget
(`profiles_for_target`), which the CLI and the API reach through the engine's facade.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from garrison.detect.judge.profiles import ProfileError, load_profile
from garrison.detect.state.store import StoreError, parse_target

TARGETS_KEY = "targets"
MAX_FILES = 1000


@dataclass(frozen=True)
class Step:
    action: str  # create | update | detach | attach | delete
    profile: str
    target: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.action} {self.profile}" + (f" {self.target}" if self.target else "")


def read_dir(directory: str) -> List[Tuple[Dict[str, Any], List[str], str]]:
    """(profile document, its targets, file) for every *.json in `directory`, validated."""
    path = Path(directory)
    if not path.is_dir():
        raise ProfileError(f"{directory} is not a directory")
    files = sorted(path.glob("*.json"))
    if len(files) > MAX_FILES:
        raise ProfileError(f"{directory} holds {len(files)} profile files; at most {MAX_FILES}")
    out: List[Tuple[Dict[str, Any], List[str], str]] = []
    seen: Dict[str, str] = {}  # profile name -> the file defining it
    for file in files:
        try:
            profile = load_profile(file)
        except ProfileError as exc:
            raise ProfileError(f"{file.name}: {exc}") from None
        if profile.name in seen:
            raise ProfileError(f"{file.name} and {seen[profile.name]} both define profile {profile.name}")
        seen[profile.name] = file.name
        out.append((profile.to_dict(), targets_of(profile.to_dict(), file.name), file.name))
    return out


def targets_of(doc: Mapping[str, Any], where: str = "profile") -> List[str]:
    targets = doc.get(TARGETS_KEY, [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise ProfileError(f'{where}: targets must be a list such as ["all", "group:NAME", "thing:NAME"]')
    for target in targets:
        try:
            parse_target(target)
        except StoreError as exc:
            raise ProfileError(f"{where}: {exc}") from None
    return sorted(set(targets))


def plan(
    engine, wanted: Sequence[Tuple[Dict[str, Any], List[str]]], prune: bool = False, detach: bool = True
) -> List[Step]:
    """The steps that make the engine's profiles and attachments match `wanted`."""
    steps: List[Step] = []
    attaches: List[Step] = []
    names = set()
    for doc, targets in wanted:
        name = doc["securityProfileName"]
        names.add(name)
        current = engine.store.get_profile(name)
        if current is None:
            steps.append(Step("create", name))
            attached: List[str] = []
        else:
            if _canonical(current) != _canonical(doc):
                steps.append(Step("update", name))
            attached = engine.store.attachments_of(name)
        if detach:
            steps += [Step("detach", name, t) for t in attached if t not in targets]
        attaches += [Step("attach", name, t) for t in targets if t not in attached]
    steps += attaches  # after every detach: a target's five-profile limit counts the final state
    if prune:
        steps += [
            Step("delete", p["securityProfileName"])
            for p in engine.store.list_profiles()
            if p["securityProfileName"] not in names
        ]
    return steps


def apply(engine, wanted: Sequence[Tuple[Dict[str, Any], List[str]]], steps: Sequence[Step]) -> None:
    """Run `steps` (from plan) in one transaction."""
    docs = {doc["securityProfileName"]: doc for doc, _ in wanted}
    with engine.store.transaction():
        for step in steps:
            if step.action in ("create", "update"):
                engine.apply_profile(docs[step.profile])
            elif step.action == "detach":
                engine.detach(step.profile, step.target)
            elif step.action == "attach":
                engine.attach(step.profile, step.target)
            elif step.action == "delete":
                engine.delete_profile(step.profile)


def _canonical(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def validate_behaviors(behaviors: Any) -> Dict[str, Any]:
    """ValidateSecurityProfileBehaviors: {"valid": bool, "validationErrors": [{"errorMessage"}]}."""
    if not isinstance(behaviors, list):
        return {"valid": False, "validationErrors": [{"errorMessage": "behaviors must be a list"}]}
    errors, seen = [], set()
    for raw in behaviors:
        try:  # each alone, through the whole loader (shape, then the metric's rules)
            behavior = load_profile({"securityProfileName": "validate", "behaviors": [raw]}).behaviors[0]
        except ProfileError as exc:
            errors.append({"errorMessage": str(exc)})
            continue
        if behavior.name in seen:
            errors.append({"errorMessage": f"behavior {behavior.name!r}: behavior names must be unique"})
        seen.add(behavior.name)
    if len(behaviors) > 100:
        errors.append({"errorMessage": f"at most 100 behaviors per profile, got {len(behaviors)}"})
    return {"valid": not errors, "validationErrors": errors}


def profiles_for_target(engine, target: str, recursive: bool = False) -> Dict[str, Any]:
    """ListSecurityProfilesForTarget: the profiles attached to `target` (all | group:NAME |
    thing:NAME); `recursive` for a thing adds those reaching it through "all" and its groups."""
    kind, name = parse_target(target)
    if recursive and kind == "thing":
        names = engine.store.profiles_for_thing(name)
        mappings = []
        for profile in names:
            for attached in engine.store.attachments_of(profile):
                if attached in ("all", target) or attached in {f"group:{g}" for g in engine.store.groups_of(name)}:
                    mappings.append((profile, attached))
    else:
        targets = [target] + (["all"] if recursive and kind == "group" else [])
        mappings = [
            (p["securityProfileName"], t) for p in engine.store.list_profiles() for t in p["targets"] if t in targets
        ]
    return {
        "securityProfileTargetMappings": [
            {"securityProfileIdentifier": {"name": profile}, "target": {"arn": attached}}
            for profile, attached in sorted(mappings)
        ]
    }
