"""Sockets between the reports: every TCP/UDP socket the kernel destroys, summarised per interval.

A report is a snapshot; a beacon that connects for a second, or a listener open for thirty, falls
between two of them. The kernel announces each socket it destroys on NETLINK_SOCK_DIAG multicast
groups (SKNLGRP_INET{,6}_{TCP,UDP}_DESTROY) with the socket's addresses, state and, for TCP, its
tcp_info. `SocketEvents` listens on them in a daemon thread and keeps, until `drain()`:

- connections: per remote address, the first endpoint seen, how many sockets, and the bytes they
  carried (tcp_info's bytes_received / bytes_acked; 0 for UDP);
- listeners: per (protocol, local port, local address), how many sockets.

What counts as a listener: a TCP socket destroyed without a peer address but with a local port
(the kernel moves a closed listener to CLOSE before destroying it, so the state alone cannot tell;
a socket only bound to a port and never connected counts too, which errs on the safe side; a
refused blocking connect() keeps its peer's address with port 0, and is a connection); a UDP socket
destroyed unconnected with a local port outside the kernel's ephemeral range
(net.ipv4.ip_local_port_range): an unconnected UDP client's port is ephemeral, and counting each
DNS/NTP query as a listener would make UDP port allow-lists useless between the reports. Nor is
a loopback TCP listener on an ephemeral port: that is a socketpair emulated over TCP (paho-mqtt
makes one at every client start: bind 127.0.0.1:0, listen, connect, accept, close), reachable from
the device only.

Bounded: at most `max_entries` distinct connections and as many listeners per interval; events
beyond are counted in `overflow`, never dropped silently. When the kernel drops messages because
the receive buffer filled (ENOBUFS), `lost` counts it. Memory stays flat under a storm: one
receive buffer, two bounded tables.

Where the kernel refuses the groups (old kernel, no sock_diag, a sandbox), `start()` logs once and
`available` stays False; the agent keeps its snapshots.
"""

import errno
import logging
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from garrison.collectors import _netlink

log = logging.getLogger(__name__)

# enum sknetlink_groups (include/uapi/linux/sock_diag.h)
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET_UDP_DESTROY = 2
SKNLGRP_INET6_TCP_DESTROY = 3
SKNLGRP_INET6_UDP_DESTROY = 4
GROUPS = (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET_UDP_DESTROY, SKNLGRP_INET6_TCP_DESTROY, SKNLGRP_INET6_UDP_DESTROY)
GROUP_MASK = sum(1 << (g - 1) for g in GROUPS)

INET_DIAG_INFO = 2  # struct tcp_info
INET_DIAG_PROTOCOL = 10  # u8, present on destroy broadcasts
DEFAULT_MAX_ENTRIES = 256
RECEIVE_BUFFER = 1 << 20  # kernel-side queue; a burst beyond it is counted in `lost`
_POLL_S = 0.5  # how often the thread checks for stop()

# nlmsghdr + inet_diag_msg: len, type, family, state, sport, dport, src[16], dst[16]
_EVENT = struct.Struct("=IH10xBBxxHH16s16s")
_MESSAGE_SIZE = 16 + 72  # nlmsghdr + inet_diag_msg; attributes follow
_RTATTR = struct.Struct("=HH")
# tcp_info: bytes_acked at 120, bytes_received at 128 (u64 each)
_TCP_BYTES = struct.Struct("=QQ")
_TCP_BYTES_OFFSET = 120
_MAPPED_PREFIX = "::ffff:"
_WILDCARDS = ("0.0.0.0", "::")


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> Tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when unreadable)."""
    try:
        with open(path) as handle:
            low, high = (int(x) for x in handle.read().split()[:2])
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def events_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket subscribed to the four destroy groups (raises OSError if refused)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _netlink.NETLINK_SOCK_DIAG)
    try:
        try:  # root may grow the buffer past rmem_max; others get what rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((0, GROUP_MASK))
        sock.settimeout(_POLL_S)
    except OSError:
        sock.close()
        raise
    return sock


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    text = socket.inet_ntop(socket.AF_INET6, raw)
    if text.startswith(_MAPPED_PREFIX) and "." in text:  # a dual-stack socket talking IPv4
        return text[len(_MAPPED_PREFIX) :]
    return text


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def parse_events(chunk: bytes) -> List[Tuple[str, int, str, int, str, int, int, int]]:
    """Destroy messages of one datagram as (protocol, state, local address, local port, remote
    address, remote port, bytes in, bytes out). Malformed or foreign messages are skipped."""
    out = []
    offset, end = 0, len(chunk)
    ntohs = socket.ntohs
    while offset + _MESSAGE_SIZE <= end:
        length, kind, family, state, sport, dport, src, dst = _EVENT.unpack_from(chunk, offset)
        if length < 16 or offset + length > end:
            break
        if (
            kind == _netlink.SOCK_DIAG_BY_FAMILY
            and length >= _MESSAGE_SIZE
            and family in (socket.AF_INET, socket.AF_INET6)
        ):
            protocol, received, acked = None, 0, 0
            attr, attr_end = offset + _MESSAGE_SIZE, offset + length
            while attr + 4 <= attr_end:
                size, attr_type = _RTATTR.unpack_from(chunk, attr)
                if size < 4 or attr + size > attr_end:
                    break
                if attr_type == INET_DIAG_PROTOCOL and size >= 5:
                    protocol = chunk[attr + 4]
                elif attr_type == INET_DIAG_INFO and size >= 4 + _TCP_BYTES_OFFSET + _TCP_BYTES.size:
                    acked, received = _TCP_BYTES.unpack_from(chunk, attr + 4 + _TCP_BYTES_OFFSET)
                attr += (size + 3) & ~3
            name = "tcp" if protocol == socket.IPPROTO_TCP else "udp" if protocol == socket.IPPROTO_UDP else None
            if name:
                out.append(
                    (
                        name,
                        state,
                        _address(family, src),
                        ntohs(sport),
                        _address(family, dst),
                        ntohs(dport),
                        received,
                        acked,
                    )
                )
        offset += (length + 3) & ~3
    return out


class Interval:
    """What one interval saw: bounded tables plus true counts."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.started = time.time()
        # remote address -> [protocol, remote port (first seen), local port, count, bytes in, bytes out]
        self.connections: Dict[str, List[Any]] = {}
        # (protocol, port, local address) -> count
        self.listeners: Dict[Tuple[str, int, str], int] = {}
        self.events = 0  # destroyed sockets seen
        self.overflow = 0  # of them, not kept because a table was full
        self.lost = 0  # times the kernel dropped messages (receive buffer full)


class SocketEvents:
    """The event collector. `start()` once; `drain()` at each report; `stop()` at the end."""

    name = "socket_events"

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, socket_factory: Callable[[], socket.socket] = events_socket
    ):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.socket_factory = socket_factory
        self.available = False
        self.error: Optional[str] = None
        self.ephemeral = ephemeral_range()
        self._interval = Interval(max_entries)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._tried = False

    def start(self) -> bool:
        """Subscribe and start listening; False (logged once) where the kernel refuses."""
        if self._tried:
            return self.available
        self._tried = True
        try:
            self._sock = self.socket_factory()
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("socket events unavailable (%s): reports carry snapshots only", exc)
            return False
        self.available = True
        self._interval = Interval(self.max_entries)
        self._thread = threading.Thread(
            target=self._run, args=(self._sock,), name="garrison-socket-events", daemon=True
        )
        self._thread.start()
        log.info(
            "socket events: listening for destroyed TCP/UDP sockets (at most %d entries per interval)", self.max_entries
        )
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * _POLL_S + 1)
        if self._sock is not None:
            self._sock.close()

    def _run(self, sock: socket.socket) -> None:
        buffer = bytearray(1 << 16)
        view = memoryview(buffer)
        while not self._stop.is_set():
            try:
                size = sock.recv_into(buffer)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: say how often
                    with self._lock:
                        self._interval.lost += 1
                    continue
                if self._stop.is_set():
                    return
                log.error("socket events stopped: %s; reports carry snapshots only from now on", exc)
                self.available, self.error = False, f"{type(exc).__name__}: {exc}"
                return
            try:
                events = parse_events(bytes(view[:size]))
            except (struct.error, ValueError) as exc:  # never let one odd message end the thread
                log.debug("unreadable socket event: %s", exc)
                continue
            if events:
                with self._lock:
                    self._record(self._interval, events)

    def _record(self, interval: Interval, events) -> None:
        low, high = self.ephemeral
        limit = self.max_entries
        connections, listeners = interval.connections, interval.listeners
        for protocol, _state, local, lport, remote, rport, received, acked in events:
            interval.events += 1
            if remote not in _WILDCARDS:
                # a peer (a refused blocking connect() leaves the peer's address but port 0)
                entry = connections.get(remote)
                if entry is None:
                    if len(connections) >= limit:
                        interval.overflow += 1
                        continue
                    connections[remote] = [protocol, rport, lport, 1, received, acked]
                else:
                    entry[3] += 1
                    entry[4] += received
                    entry[5] += acked
            elif lport and not rport and not (low <= lport <= high and (protocol == "udp" or _loopback(local))):
                key = (protocol, lport, local)
                count = listeners.get(key)
                if count is None:
                    if len(listeners) >= limit:
                        interval.overflow += 1
                        continue
                    listeners[key] = 1
                else:
                    listeners[key] = count + 1

    def feed(self, chunk: bytes) -> None:
        """Record the events of one datagram as if received (tests, captured bytes)."""
        events = parse_events(chunk)
        with self._lock:
            self._record(self._interval, events)

    def drain(self) -> Dict[str, Any]:
        """The interval's summary (see `summary`), and a fresh interval begins."""
        with self._lock:
            interval, self._interval = self._interval, Interval(self.max_entries)
        return summary(interval, time.time(), self.available)


def summary(interval: Interval, now: float, available: bool = True) -> Dict[str, Any]:
    """Plain data: connections sorted by bytes (largest first), listeners by port."""
    connections = [
        {
            "protocol": e[0],
            "remote_address": remote,
            "remote_port": e[1],
            "local_port": e[2],
            "count": e[3],
            "bytes_in": e[4],
            "bytes_out": e[5],
        }
        for remote, e in interval.connections.items()
    ]
    connections.sort(key=lambda c: (-(c["bytes_in"] + c["bytes_out"]), c["remote_address"]))
    listeners = [
        {"protocol": p, "port": port, "address": address, "count": n}
        for (p, port, address), n in interval.listeners.items()
    ]
    listeners.sort(key=lambda entry: (entry["protocol"], entry["port"], entry["address"]))
    return {
        "available": available,
        "seconds": max(0.0, now - interval.started),
        "connections": connections,
        "listeners": listeners,
        "events": interval.events,
        "overflow": interval.overflow,
        "lost": interval.lost,
    }
