"""Sockets the kernel sees: listening TCP ports, listening UDP sockets, established TCP connections.

Backends: "netlink" (NETLINK_SOCK_DIAG, the default) and "procfs" (/proc/net/*), with "auto"
choosing netlink and falling back to procfs, once and with one warning, where sock_diag is
unavailable (socket creation or the first request fails).

What counts as listening:
- TCP: sockets in LISTEN state.
- UDP: bound, unconnected sockets (kernel state TCP_CLOSE; `ss -uln` calls them UNCONN). A UDP
  socket that called connect() talks to one peer only and is not a listener, as for `ss -l`.

Addresses: an IPv4-mapped IPv6 address (a dual-stack socket talking IPv4, `::ffff:a.b.c.d`) is
reported as the IPv4 address with family 4, since that is what is on the wire. Wildcard binds
("0.0.0.0", "::") have interface None.
"""

import logging
import threading
from typing import Callable, List, Union

from garrison.collectors import _netlink, _procfs, interfaces
from garrison.collectors.base import CollectorResult, Connection, ListeningSocket, record_factory, timed

log = logging.getLogger(__name__)

BACKENDS = ("auto", "netlink", "procfs")
LISTEN_STATES = {
    "tcp": _netlink.states_mask(_netlink.TCP_LISTEN),
    "udp": _netlink.states_mask(_netlink.TCP_CLOSE),
}
ESTABLISHED_STATES = _netlink.states_mask(_netlink.TCP_ESTABLISHED)
_MAPPED_PREFIX = "::ffff:"


class BackendChooser:
    """Resolves "auto" once per process: netlink if it answers, else procfs (logged once)."""

    def __init__(self, socket_factory: Callable = _netlink.default_socket, procfs_root: str = "/proc"):
        self.netlink = _netlink.SockDiag(socket_factory)
        self.procfs = _procfs.ProcNet(procfs_root)
        self._auto: Union[_netlink.SockDiag, _procfs.ProcNet, None] = None
        self._lock = threading.Lock()

    def get(self, backend: str = "auto"):
        if backend == "netlink":
            return self.netlink
        if backend == "procfs":
            return self.procfs
        if backend != "auto":
            raise ValueError(f"unknown socket backend {backend!r} (choose one of {', '.join(BACKENDS)})")
        with self._lock:
            if self._auto is None:
                try:
                    self.netlink.probe()
                    self._auto = self.netlink
                except OSError as exc:
                    log.warning(
                        "netlink sock_diag unavailable (%s); reading sockets from %s/net instead", exc, self.procfs.root
                    )
                    self._auto = self.procfs
            return self._auto


_CHOOSER = BackendChooser()


def configure(socket_factory: Callable = _netlink.default_socket, procfs_root: str = "/proc") -> None:
    """Replace the backends used by this module (tests; a /proc mounted elsewhere).
    "auto" is resolved anew on next use."""
    global _CHOOSER
    _CHOOSER = BackendChooser(socket_factory, procfs_root)


def backend_name(backend: str = "auto") -> str:
    """The backend actually used for `backend`: "netlink" or "procfs"."""
    return _CHOOSER.get(backend).name


def _unmap(family: int, address: str):
    if family == 6 and address.startswith(_MAPPED_PREFIX) and "." in address:
        return 4, address[len(_MAPPED_PREFIX) :]
    return family, address


_new_listening = record_factory(ListeningSocket)
_new_connection = record_factory(Connection)


def _placer():
    """address text -> (family, shown address, interface), computed once per distinct address."""
    owners = interfaces.address_map()
    placed = {}

    def place(family: int, address: str):
        family, shown = _unmap(family, address)
        where = placed[address] = (family, shown, interfaces.interface_for(shown, owners))
        return where

    return placed, place


def listening(protocol: str, backend: str = "auto") -> List[ListeningSocket]:
    """Listening sockets of `protocol` ("tcp" or "udp"), IPv4 and IPv6, with their interfaces."""
    if protocol not in LISTEN_STATES:
        raise ValueError(f"unknown protocol {protocol!r} (choose tcp or udp)")
    raw = _CHOOSER.get(backend).query(protocol, LISTEN_STATES[protocol])
    placed, place = _placer()
    found = []
    for family, local, port, _remote, _rport, inode in raw:
        where = placed.get(local) or place(family, local)
        found.append(_new_listening(protocol, where[0], where[1], port, where[2], inode, None, None))
    return found


def established(backend: str = "auto") -> List[Connection]:
    """Established TCP connections, IPv4 and IPv6, with the interface of their local address."""
    raw = _CHOOSER.get(backend).query("tcp", ESTABLISHED_STATES)
    placed, place = _placer()
    found = []
    for family, local, port, remote, rport, inode in raw:
        where = placed.get(local) or place(family, local)
        peer = placed.get(remote) or place(family, remote)
        found.append(_new_connection(where[0], where[1], port, peer[1], rport, where[2], inode, None, None))
    return found


class _SocketCollector:
    name = ""

    def __init__(self, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown socket backend {backend!r} (choose one of {', '.join(BACKENDS)})")
        self.backend = backend

    def _produce(self):
        raise NotImplementedError

    def collect(self) -> CollectorResult:
        result = timed(self.name, self._produce)
        try:
            result.details["backend"] = backend_name(self.backend)
        except Exception:  # the name is informative only
            pass
        return result


class ListeningTcpCollector(_SocketCollector):
    """TCP sockets in LISTEN state (data: list of ListeningSocket)."""

    name = "listening_tcp"

    def _produce(self):
        return listening("tcp", self.backend)


class ListeningUdpCollector(_SocketCollector):
    """Bound, unconnected UDP sockets (data: list of ListeningSocket)."""

    name = "listening_udp"

    def _produce(self):
        return listening("udp", self.backend)


class EstablishedConnectionsCollector(_SocketCollector):
    """Established TCP connections (data: list of Connection)."""

    name = "established_connections"

    def _produce(self):
        return established(self.backend)
