"""Every common name the fleet PKI ever issued, so that no name is ever held by two parties.

A device's identity is its certificate's CN, and the broker grants the engine's rights to the
CN named in its ACL (garrison.detect.ops.brokerconf). A device certificate carrying the engine's name, or a
name issued before (to the engine, the broker or another device), would give its holder rights
that are not its own. So DIR/issued-names records one line "KIND NAME" (kind: thing, engine,
server) for every certificate, appended under a lock *before* the certificate is written, and
never rewritten: deleting a certificate file does not free its name.

The default engine identity is always reserved: a broker configured with the default (or before
`pki engine` ran) gives it the engine's rights.
"""

import fcntl
import os
from pathlib import Path
from typing import Dict, Set

INDEX_NAME = "issued-names"
ENGINE_NAME = "engine.name"
KINDS = ("thing", "engine", "server")


class NameTaken(Exception):
    """The name was issued before or is reserved; the message is one line."""


def recorded_engine_identity(pki_dir: Path) -> "str | None":
    """The engine identity `pki engine` recorded in `pki_dir`, or None."""
    try:
        return (Path(pki_dir) / ENGINE_NAME).read_text().strip() or None
    except FileNotFoundError:
        return None


def issued(pki_dir: Path) -> Dict[str, Set[str]]:
    """name -> the kinds it was issued as. Directories made before the index existed count their
    device certificates and recorded engine name too."""
    pki_dir = Path(pki_dir)
    names: Dict[str, Set[str]] = {}
    for crt in (pki_dir / "things").glob("*.crt"):
        names.setdefault(crt.stem, set()).add("thing")
    engine = recorded_engine_identity(pki_dir)
    if engine:
        names.setdefault(engine, set()).add("engine")
    try:
        text = (pki_dir / INDEX_NAME).read_text()
    except FileNotFoundError:
        return names
    for line in text.splitlines():
        kind, _, name = line.strip().partition(" ")
        if kind in KINDS and name:
            names.setdefault(name, set()).add(kind)
    return names


def _conflict(names: Dict[str, Set[str]], kind: str, name: str, default_engine: str, engine: "str | None"):
    kinds = names.get(name, set())
    if kind == "thing":
        if name == default_engine or name == engine or "engine" in kinds:
            return f"{name!r} is reserved for the detect engine's identity; a device cannot have it"
        if kinds:
            return (
                f"a certificate for {name!r} was issued before ({', '.join(sorted(kinds))}); "
                "refusing to issue the name again"
            )
    elif kind == "engine":
        other = kinds - {"engine"}
        if other:
            return (
                f"{name!r} was issued before as a {'/'.join(sorted(other))} name; "
                "the engine needs an identity of its own"
            )
    elif kind == "server":
        other = kinds - {"server"}
        if other or name == default_engine:
            return f"{name!r} is already a device's or the engine's name; refusing it as the broker's"
    return None


def claim(pki_dir: Path, kind: str, name: str, default_engine: str) -> None:
    """Record that a certificate for `name` is being issued as `kind`, or raise NameTaken."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    path = Path(pki_dir) / INDEX_NAME
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two `pki issue` at once must not both get the name
        problem = _conflict(issued(pki_dir), kind, name, default_engine, recorded_engine_identity(pki_dir))
        if problem:
            raise NameTaken(problem)
        os.write(fd, f"{kind} {name}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
