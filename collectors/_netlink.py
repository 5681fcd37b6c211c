"""The netlink backend: read sockets straight from the kernel over NETLINK_SOCK_DIAG.

One raw AF_NETLINK socket, one `inet_diag_req_v2` per address family, with the wanted TCP states
as a kernel-side filter (so a LISTEN query never walks the established connections in Python).
No pyroute2: its import alone costs ~25 MB, and its dump is ~40x slower than this.

Both backends return the same raw tuples:
    (family, local_address, local_port, remote_address, remote_port, inode)
with family 4 or 6 and addresses as text (IPv4-mapped addresses are unmapped by `sockets`).
"""

import os
import socket
import struct
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from garrison.collectors.base import MAX_SOCKETS, RawSocket, say_not_itemised

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

# Kernel socket states (include/net/tcp_states.h). UDP uses them too: TCP_CLOSE is an
# unconnected (bound) UDP socket, TCP_ESTABLISHED a connect()ed one.
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_LISTEN = 10

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
FAMILIES = ((socket.AF_INET, 4), (socket.AF_INET6, 6))

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid (48 bytes)
_REQUEST = struct.Struct("=BBBxI48x")
# nlmsghdr (len, type, flags, seq, pid) + struct inet_diag_msg (72 bytes): family, state, timer,
# retrans, inet_diag_sockid {sport, dport (network order: unpacked native, then ntohs), src[16],
# dst[16], if, cookie[2]}, expires, rqueue, wqueue, uid, inode. Only what we report is unpacked.
_SOCKET_MSG = struct.Struct("=IH2xI4xB3xHH16s16s12x16xI")
_ERRNO = struct.Struct("=i")
_RECV_BUFFER = 1 << 18  # the kernel sends dump parts of at most 32 KB
_TIMEOUT_S = 5.0  # a kernel (or emulator) that never answers must not hang us


class NetlinkError(OSError):
    """The kernel answered a sock_diag request with an error (or not at all as expected)."""


def states_mask(*states: int) -> int:
    return sum(1 << s for s in states)


def request(seq: int, family: int, protocol: int, states: int) -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request, as bytes."""
    body = _REQUEST.pack(family, protocol, 0, states)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse(
    chunks: Iterable[bytes], seq: int, out: List[RawSocket], limit: int = MAX_SOCKETS, seen: Optional[set] = None
) -> int:
    """Parse the datagrams of one dump reply (multipart, until NLMSG_DONE) into `out`; returns
    how many sockets were read and not kept. Past `limit` sockets only one with a new port
    (listening) or remote address (connected) is kept, up to 2 x `limit`: a flood of one
    kind cannot hide the others. `seen`: those keys, shared by the queries of one collection.

    Raises NetlinkError on NLMSG_ERROR, a DONE carrying an error, or a reply that ends early.
    Messages of other sequence numbers (a stale reply) are skipped.
    """
    ntop, ntohs = socket.inet_ntop, socket.ntohs
    unpack_header, unpack_socket = _NLMSGHDR.unpack_from, _SOCKET_MSG.unpack_from
    header_size, socket_size = _NLMSGHDR.size, _SOCKET_MSG.size
    # raw address -> text, per family: a few addresses repeat across thousands of sockets
    names: Dict[int, Dict[bytes, Tuple[int, str]]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
    left_out = 0
    seen = set() if seen is None else seen
    for chunk in chunks:
        offset, end = 0, len(chunk)
        while offset + header_size <= end:
            if offset + socket_size <= end:
                # most messages are sockets: header and inet_diag_msg in one unpack (the socket
                # fields are ignored unless the type says it is one)
                length, kind, msg_seq, family_code, sport, dport, src, dst, inode = unpack_socket(chunk, offset)
            else:
                length, kind, _flags, msg_seq, _pid = unpack_header(chunk, offset)
            if length < header_size or offset + length > end:
                raise NetlinkError(f"malformed netlink message (length {length})")
            if msg_seq == seq:
                if kind == SOCK_DIAG_BY_FAMILY and length >= socket_size:
                    key = dst if dport else sport
                    if len(out) >= limit and (key in seen or len(out) >= 2 * limit):
                        left_out += 1
                        offset += (length + 3) & ~3
                        continue
                    seen.add(key)
                    cache = names.get(family_code)
                    if cache is None:
                        raise NetlinkError(f"sock_diag answered with address family {family_code}")
                    local = cache.get(src)
                    if local is None:
                        local = cache[src] = _text(ntop, family_code, src)
                    remote = cache.get(dst)
                    if remote is None:
                        remote = cache[dst] = _text(ntop, family_code, dst)
                    out.append((local[0], local[1], ntohs(sport), remote[1], ntohs(dport), inode))
                elif _finished(kind, chunk, offset, length, "sock_diag"):
                    return left_out
            offset += (length + 3) & ~3  # NLMSG_ALIGN
    raise NetlinkError("sock_diag reply ended without NLMSG_DONE")


def _finished(kind: int, chunk: bytes, offset: int, length: int, what: str) -> bool:
    """True at NLMSG_DONE; raise on NLMSG_ERROR or a DONE that carries an error."""
    if kind not in (NLMSG_DONE, NLMSG_ERROR):
        return False
    error = _ERRNO.unpack_from(chunk, offset + _NLMSGHDR.size)[0] if length >= _NLMSGHDR.size + 4 else 0
    if kind == NLMSG_DONE:
        if error < 0:
            raise NetlinkError(-error, f"{what} dump failed: {os.strerror(-error)}")
        return True
    if error >= 0:
        raise NetlinkError(f"{what} request answered with an unexpected acknowledgement")
    raise NetlinkError(-error, f"{what} request refused: {os.strerror(-error)}")


def _text(ntop, family_code: int, raw: bytes):
    if family_code == socket.AF_INET:
        return 4, ntop(socket.AF_INET, raw[:4])
    return 6, ntop(socket.AF_INET6, raw)


def _receive(sock: socket.socket) -> Iterator[bytes]:
    buffer = bytearray(_RECV_BUFFER)
    while True:
        size = sock.recv_into(buffer, 0, socket.MSG_TRUNC)
        if size > len(buffer):
            raise NetlinkError(f"netlink message of {size} bytes truncated")
        if size == 0:
            return
        yield bytes(buffer[:size])


def _open(socket_factory: Callable[[], socket.socket]) -> socket.socket:
    sock = socket_factory()
    try:
        sock.settimeout(_TIMEOUT_S)
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def default_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)


class SockDiag:
    """The netlink backend. `socket_factory` lets tests make the kernel side unavailable."""

    name = "netlink"

    def __init__(self, socket_factory: Callable[[], socket.socket] = default_socket):
        self.socket_factory = socket_factory
        self._seq = 0

    def query(self, protocol: str, states: int) -> List[RawSocket]:
        """Sockets of `protocol` ("tcp"/"udp") in any of `states` (a states_mask), both families."""
        proto = PROTOCOLS[protocol]
        out: List[RawSocket] = []
        left_out = 0
        seen: set = set()
        with _open(self.socket_factory) as sock:
            for af, _family in FAMILIES:
                self._seq += 1
                sock.sendto(request(self._seq, af, proto, states), (0, 0))
                left_out += parse(_receive(sock), self._seq, out, seen=seen)
        say_not_itemised(self.name, protocol, left_out)
        return out

    def probe(self) -> None:
        """Raise if sock_diag cannot answer here (no netlink, no INET_DIAG, qemu-user...)."""
        with _open(self.socket_factory) as sock:
            self._seq += 1
            # states 0 matches no socket: the kernel answers with just NLMSG_DONE, or an error.
            sock.sendto(request(self._seq, socket.AF_INET, socket.IPPROTO_TCP, 0), (0, 0))
            parse(_receive(sock), self._seq, [])

    def capture(self, protocol: str, states: int, family: int) -> List[bytes]:
        """The raw reply datagrams of one dump (to save as test fixtures), with seq 1."""
        return capture(self.socket_factory, request(1, family, PROTOCOLS[protocol], states))


def capture(socket_factory: Callable[[], socket.socket], message: bytes) -> List[bytes]:
    """Send one dump request; return its reply datagrams as received, up to NLMSG_DONE."""
    with _open(socket_factory) as sock:
        sock.sendto(message, (0, 0))
        chunks = []
        for chunk in _receive(sock):
            chunks.append(chunk)
            offset = 0
            while offset + _NLMSGHDR.size <= len(chunk):
                length, kind = _NLMSGHDR.unpack_from(chunk, offset)[:2]
                if kind in (NLMSG_DONE, NLMSG_ERROR) or length < _NLMSGHDR.size:
                    return chunks
                offset += (length + 3) & ~3
        return chunks


# --- interface addresses (NETLINK_ROUTE, RTM_GETADDR): which interface owns which address ------

RTM_NEWADDR = 20
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type


def parse_addresses(chunks: Iterable[bytes], seq: int) -> List[Tuple[int, str]]:
    """(interface index, address text) from an RTM_GETADDR dump reply.

    IFA_LOCAL is the interface's own address where present (on point-to-point links IFA_ADDRESS
    is the peer); otherwise IFA_ADDRESS is.
    """
    found = []
    for chunk in chunks:
        offset, end = 0, len(chunk)
        while offset + _NLMSGHDR.size <= end:
            length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(chunk, offset)
            if length < _NLMSGHDR.size or offset + length > end:
                raise NetlinkError(f"malformed netlink message (length {length})")
            if msg_seq == seq:
                if kind == RTM_NEWADDR:
                    found.extend(_address_of(chunk, offset + _NLMSGHDR.size, offset + length))
                elif _finished(kind, chunk, offset, length, "RTM_GETADDR"):
                    return found
            offset += (length + 3) & ~3
    raise NetlinkError("RTM_GETADDR reply ended without NLMSG_DONE")


def _address_of(chunk: bytes, offset: int, end: int) -> List[Tuple[int, str]]:
    if offset + _IFADDRMSG.size > end:
        raise NetlinkError("truncated RTM_NEWADDR message")
    family, _prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(chunk, offset)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return []
    attrs = {}
    offset += _IFADDRMSG.size
    while offset + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(chunk, offset)
        if size < _RTATTR.size:
            break
        attrs[kind] = chunk[offset + _RTATTR.size : offset + size]
        offset += (size + 3) & ~3
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if not raw:
        return []
    try:
        return [(index, socket.inet_ntop(family, raw))]
    except ValueError:
        raise NetlinkError(f"address of {len(raw)} bytes in an RTM_NEWADDR message") from None


def route_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def address_request(seq: int) -> bytes:
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def interface_addresses(socket_factory: Callable[[], socket.socket] = route_socket) -> List[Tuple[int, str]]:
    """Every configured IPv4/IPv6 address as (interface index, text), from one RTM_GETADDR dump."""
    with _open(socket_factory) as sock:
        sock.sendto(address_request(1), (0, 0))
        return parse_addresses(_receive(sock), 1)
