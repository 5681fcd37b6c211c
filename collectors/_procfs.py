"""The procfs backend: parse /proc/net/{tcp,tcp6,udp,udp6}, for kernels without sock_diag.

Slower than netlink (the kernel formats every socket as text, whatever its state, and we filter
here), but available everywhere /proc is. Returns the same raw tuples as `_netlink`.
"""

import socket
import struct
import sys
from pathlib import Path
from typing import Dict, Iterable, List

from garrison.collectors.base import RawSocket

_FILES = {"tcp": (("tcp", 4), ("tcp6", 6)), "udp": (("udp", 4), ("udp6", 6))}


def _swap_words(raw: bytes, byteorder: str) -> bytes:
    """procfs prints addresses as 32-bit words in host order; give them back in network order."""
    if byteorder == "big":
        return raw
    return struct.pack(">%dI" % (len(raw) // 4), *struct.unpack("<%dI" % (len(raw) // 4), raw))


def parse(lines: Iterable[str], family: int, states: int, out: List[RawSocket], byteorder: str = sys.byteorder) -> None:
    """Parse the lines of one /proc/net/{tcp,udp}[6] file, keeping sockets whose state is in
    `states` (a bit mask of kernel states, as for netlink). The header line is skipped.

    `byteorder` is the byte order of the machine that wrote the text (captured fixtures).
    """
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    ntop = socket.inet_ntop
    names: Dict[str, str] = {}
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


class ProcNet:
    """The procfs backend, reading `<root>/net/...` (root "/proc" by default; a fixture tree in tests)."""

    name = "procfs"

    def __init__(self, root: str = "/proc", byteorder: str = sys.byteorder):
        self.root = Path(root)
        self.byteorder = byteorder

    def query(self, protocol: str, states: int) -> List[RawSocket]:
        out: List[RawSocket] = []
        for filename, family in _FILES[protocol]:
            try:
                with open(self.root / "net" / filename) as text:
                    parse(text, family, states, out, self.byteorder)
            except FileNotFoundError:
                if family == 4:
                    raise
                # no /proc/net/tcp6 on a kernel without IPv6: there are no IPv6 sockets to report
        return out
