"""systemd's notify protocol, spoken directly (no libsystemd): READY=1, WATCHDOG=1, STOPPING=1.

NOTIFY_SOCKET names a unix datagram socket; a leading '@' means the abstract namespace.
"""

import os
import socket
from typing import Optional


def notify(state: str, environ=None) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not under systemd or on error."""
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
        return True
    except OSError:
        return False


def watchdog_interval(environ=None) -> Optional[float]:
    """Seconds between watchdog pings systemd expects (WATCHDOG_USEC), or None if no watchdog."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6
