"""What every collector shares: the records it returns and how it reports its own run.

A collector is anything with a `name` and a `collect()` that returns a `CollectorResult`
(duck-typed, as prometheus_client's collectors are). Each collector is usable alone.
"""

import logging
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Optional, Tuple

from garrison.wire.limits import MAX_STRING_CHARS

log = logging.getLogger(__name__)


def os_text(name: str) -> str:
    """A name the OS gave us (a path, a process name) as valid Unicode: bytes that are not UTF-8
    (which Python keeps as lone surrogates, that no report can encode or the engine accept) show
    as \\xNN, and a name past the wire's MAX_STRING_CHARS keeps its end ("..." first). Any local
    process chooses such names; one must not cost the device its report."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return text if len(text) <= MAX_STRING_CHARS else "..." + text[3 - MAX_STRING_CHARS :]


@dataclass(frozen=True)
class ListeningSocket:
    """A TCP socket in LISTEN state, or a bound UDP socket."""

    protocol: str  # "tcp" or "udp"
    family: int  # 4 or 6
    address: str  # bound address, "0.0.0.0" / "::" for wildcard
    port: int
    interface: Optional[str] = None  # owner of the bound address; None for wildcard binds
    inode: int = 0
    pid: Optional[int] = None
    process: Optional[str] = None


@dataclass(frozen=True)
class Connection:
    """An established TCP connection."""

    family: int
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    interface: Optional[str] = None  # owner of the local address
    inode: int = 0
    pid: Optional[int] = None
    process: Optional[str] = None


@dataclass(frozen=True)
class InterfaceCounters:
    """Counters of one network interface since it came up (never deltas)."""

    name: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


# What a socket backend (netlink or procfs) returns per socket, before interfaces and records:
# (family 4|6, local address, local port, remote address, remote port, inode)
RawSocket = Tuple[int, str, int, str, int, int]
# Sockets itemised per query (listening TCP, listening UDP, established TCP): any local user may
# open tens of thousands (76,000 took a collection to 100 MB RSS, past the unit's MemoryMax=96M, at
# cycle). Past this many only a socket with a new port or remote address is kept, up to twice as
# many (collectors._netlink.parse); the others are counted and logged.
MAX_SOCKETS = 10000


def say_not_itemised(backend: str, protocol: str, left_out: int) -> None:
    if left_out:
        log.warning(
            "%s: %d %s sockets not itemised (a flood of sockets?): past %d only those with a new port "
            "or remote address are kept, at most %d; the report's totals count those kept",
            backend,
            left_out,
            protocol,
            MAX_SOCKETS,
            2 * MAX_SOCKETS,
        )


@dataclass
class CollectorResult:
    """What one run of a collector produced, and how the run went."""

    name: str
    data: Any = None
    duration_s: float = 0.0
    success: bool = True
    error: Optional[str] = None
    details: dict = field(default_factory=dict)


def timed(name: str, produce: Callable[[], Any]) -> CollectorResult:
    """Run `produce`, timing it; a failure becomes an unsuccessful result, never an exception."""
    start = time.perf_counter()
    try:
        data = produce()
    except Exception as exc:  # a collector must never take the agent down
        log.warning("collector %s failed: %s", name, exc)
        return CollectorResult(name, None, time.perf_counter() - start, False, f"{type(exc).__name__}: {exc}")
    return CollectorResult(name, data, time.perf_counter() - start)


def record_factory(cls: type) -> Callable[..., Any]:
    """A constructor for the frozen dataclass `cls`, taking every field positionally, ~3x faster.

    A frozen dataclass's __init__ sets each field through object.__setattr__; the socket hot path
    builds thousands of records per collection (budget: 50 ms for 5,000 sockets), so it fills the
    instance __dict__ directly instead. The result is equal to `cls(*values)`; the records have no
    __post_init__ to skip. Generated from fields(cls), like dataclasses' own methods, so it
    follows the record's definition.
    """
    if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__} needs its own __init__ (it has __post_init__ or __slots__)")
    names = [f.name for f in fields(cls)]
    body = "".join(f"    d[{name!r}] = {name}\n" for name in names)
    source = f"def make({', '.join(names)}):\n    o = new(cls)\n    d = o.__dict__\n{body}    return o\n"
    namespace: Dict[str, Any] = {"new": object.__new__, "cls": cls}
    exec(source, namespace)  # noqa: S102 - source built from field names only
    return namespace["make"]
