"""What every collector shares: the records it returns and how it reports its own run.

A collector is anything with a `name` and a `collect()` that returns a `CollectorResult`
(duck-typed, as prometheus_client's collectors are). Each collector is usable alone.
"""
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListeningSocket:
    """A TCP socket in LISTEN state, or a bound UDP socket."""

    protocol: str                    # "tcp" or "udp"
    family: int                      # 4 or 6
    address: str                     # bound address, "0.0.0.0" / "::" for wildcard
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
