"""Read systemd unit files and emulate the parts of systemd the agent relies on.

`read_unit` parses a unit into {section: {key: [values...]}} (keys may repeat, as systemd
allows). `exec_argv` turns ExecStart into argv the way systemd does: ${VAR} expands to one
word, a bare $VAR word splits into words (none when empty); prefixes ('-', '@', '+', ...) are
not used by our units and are refused.
"""
import re
import shlex
from pathlib import Path
from typing import Dict, List, Mapping

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
AGENT_UNIT = PACKAGING / "systemd" / "garrison-agent.service"
DETECT_UNIT = PACKAGING / "systemd" / "garrison-detect.service"

Unit = Dict[str, Dict[str, List[str]]]


def read_unit(path: Path) -> Unit:
    unit: Unit = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise ValueError(f"{path}: cannot parse {raw!r}")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def setting(unit: Unit, key: str, section: str = "Service") -> str:
    """The effective (last) value of a single-valued setting."""
    return unit[section][key][-1]


def exec_argv(unit: Unit, environment: Mapping[str, str]) -> List[str]:
    (command,) = unit["Service"]["ExecStart"]
    if command[:1] in "-@+!:":
        raise ValueError(f"unexpected ExecStart prefix in {command!r}")

    argv: List[str] = []
    for word in shlex.split(command):
        bare = re.fullmatch(r"\$(\w+)", word)
        if bare:  # $VAR alone: split into words; an empty value leaves nothing
            argv.extend(shlex.split(environment[bare.group(1)]))
        else:     # ${VAR}: one word
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], word))
    return argv


def environment(unit: Unit) -> Dict[str, str]:
    """Environment= assignments of the unit (not EnvironmentFile=)."""
    env = {}
    for line in unit["Service"].get("Environment", []):
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value
    return env
