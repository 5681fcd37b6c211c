"""The procfs backend: parse /proc/net/{tcp,tcp6,udp,udp6}, for kernels without sock_diag.

Slower than netlink (the kernel formats every socket as text, whatever its state, and we filter
here), but available everywhere /proc is. Returns the same raw tuples as `_netlink`.
"""

import socket
import struct
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from garrison.collectors.base import MAX_SOCKETS, RawSocket, say_not_itemised

_FILES = {"tcp": (("tcp", 4), ("tcp6", 6)), "udp": (("udp", 4), ("udp6", 6))}


def _swap_words(raw: bytes, byteorder: str) -> bytes:
    """procfs prints addresses as 32-bit words in host order; give them back in network order."""
    if byteorder == "big":
        return raw
    return struct.pack(">%dI" % (len(raw) // 4), *struct.unpack("<%dI" % (len(raw) // 4), raw))


def parse(
    lines: Iterable[str],
    family: int,
    states: int,
    out: List[RawSocket],
    byteorder: str = sys.byteorder,
    limit: int = MAX_SOCKETS,
    seen: Optional[set] = None,
) -> int:
    """Parse the lines of one /proc/net/{tcp,udp}[6] file, keeping sockets whose state is in
    `states` (a bit mask of kernel states, as for netlink). The header line is skipped. Returns
    how many sockets were not kept: past `limit`, as for `_netlink.parse`.

    `byteorder` is the byte order of the machine that wrote the text (captured fixtures).
    """
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    ntop = socket.inet_ntop
    names: Dict[str, str] = {}
    left_out = 0
    seen = set() if seen is None else seen
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[0] == "sl":
            continue
        try:
            state = int(fields[3], 16)
        except ValueError:
            continue
        if not (states >> state) & 1:
            continue
        local_hex, _, local_port = fields[1].partition(":")
        remote_hex, _, remote_port = fields[2].partition(":")
        key = remote_hex if remote_port.strip("0") else local_port
        if len(out) >= limit and (key in seen or len(out) >= 2 * limit):
            left_out += 1
            continue
        seen.add(key)
        try:
            local = names.get(local_hex)
            if local is None:
                local = names[local_hex] = ntop(af, _swap_words(bytes.fromhex(local_hex), byteorder))
            remote = names.get(remote_hex)
            if remote is None:
                remote = names[remote_hex] = ntop(af, _swap_words(bytes.fromhex(remote_hex), byteorder))
            out.append((family, local, int(local_port, 16), remote, int(remote_port, 16), int(fields[9])))
        except (ValueError, struct.error):
            raise ValueError(f"malformed line in a /proc/net socket table: {line.strip()[:120]!r}") from None
    return left_out


class ProcNet:
    """The procfs backend, reading `<root>/net/...` (root "/proc" by default; a fixture tree in tests)."""

    name = "procfs"

    def __init__(self, root: str = "/proc", byteorder: str = sys.byteorder):
        self.root = Path(root)
        self.byteorder = byteorder

    def query(self, protocol: str, states: int) -> List[RawSocket]:
        out: List[RawSocket] = []
        left_out = 0
        seen: set = set()
        for filename, family in _FILES[protocol]:
            try:
                with open(self.root / "net" / filename) as text:
                    left_out += parse(text, family, states, out, self.byteorder, seen=seen)
            except FileNotFoundError:
                if family == 4:
                    raise
                # no /proc/net/tcp6 on a kernel without IPv6: there are no IPv6 sockets to report
        say_not_itemised(self.name, protocol, left_out)
        return out
