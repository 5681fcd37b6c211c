"""Network interfaces: traffic counters from /proc/net/dev, and which interface owns an address."""

import logging
import socket
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional

from garrison.collectors import _netlink
from garrison.collectors.base import CollectorResult, InterfaceCounters, timed

log = logging.getLogger(__name__)
LOOPBACK = "lo"  # Linux's loopback device is always "lo"


def parse_dev(text: str) -> Dict[str, InterfaceCounters]:
    """All interfaces of a /proc/net/dev text (two header lines, then `name: rx... tx...`)."""
    found: Dict[str, InterfaceCounters] = {}
    for line in text.splitlines()[2:]:
        name, sep, numbers = line.partition(":")
        fields = numbers.split()
        if not sep or len(fields) < 10:
            continue
        name = name.strip()
        # receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets ...
        found[name] = InterfaceCounters(
            name,
            bytes_in=int(fields[0]),
            bytes_out=int(fields[8]),
            packets_in=int(fields[1]),
            packets_out=int(fields[9]),
        )
    return found


def counters(
    include: Optional[Iterable[str]] = None, include_loopback: bool = False, root: str = "/proc"
) -> Dict[str, InterfaceCounters]:
    """Counters per interface (since it came up) from `<root>/net/dev`.

    `include`: only these interfaces (an explicit "lo" here is honoured); interfaces that do not
    exist are simply absent. Otherwise every interface, loopback only if `include_loopback`.
    """
    every = parse_dev((Path(root) / "net" / "dev").read_text())
    if include is not None:
        wanted = set(include)
        return {name: c for name, c in every.items() if name in wanted}
    return {name: c for name, c in every.items() if include_loopback or name != LOOPBACK}


def address_map() -> Dict[str, str]:
    """Every configured IPv4/IPv6 address (text, no "%scope") -> the interface that owns it.

    One RTM_GETADDR netlink dump (~0.05 ms, no import) names the addresses; psutil.net_if_addrs
    (~0.15 ms, plus ~12 ms and ~2 MB for importing psutil) is the fallback where netlink route
    sockets are refused. An address present on several interfaces (link-local) maps to the first.
    """
    owners: Dict[str, str] = {}
    try:
        names = dict(socket.if_nameindex())
        for index, address in _netlink.interface_addresses():
            if index in names:
                owners.setdefault(address, names[index])
        return owners
    except OSError as exc:
        log.debug("RTM_GETADDR failed (%s); asking psutil for interface addresses", exc)
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        for addr in addresses:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                owners.setdefault(addr.address.partition("%")[0], name)
    return owners


def interface_for(address: str, owners: Mapping[str, str]) -> Optional[str]:
    """The interface that owns `address`, None for a wildcard or an unknown address.

    Any 127.0.0.0/8 address is local through loopback (systemd-resolved binds 127.0.0.53).
    """
    name = owners.get(address)
    if name is None and address.startswith("127."):
        name = owners.get("127.0.0.1", LOOPBACK)
    return name


class InterfaceCountersCollector:
    """Counters of the chosen interfaces (data: name -> InterfaceCounters)."""

    name = "interface_counters"

    def __init__(self, include: Optional[Iterable[str]] = None, include_loopback: bool = False, root: str = "/proc"):
        self.include = None if include is None else list(include)
        self.include_loopback = include_loopback
        self.root = root

    def collect(self) -> CollectorResult:
        return timed(self.name, lambda: counters(self.include, self.include_loopback, self.root))
