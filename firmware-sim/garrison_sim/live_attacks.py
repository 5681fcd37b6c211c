"""Attacks performed for real from a device's namespace: real sockets, real traffic.

Each attack creates its sockets inside the device's namespace (so the agent there sees them)
and, where it sends traffic, runs one bounded thread: every loop stops at a byte budget, a time
limit or `stop()`, whichever comes first.
"""

import socket
import threading
import time
from typing import List, Optional, Tuple

from .netns import C2_SERVER, inside
from .sinks import C2_PORT, EXFIL_PORT, FLOOD_PORT, SCAN_PORT

BACKDOOR_PORT = 4444
FLOOD_BYTES = 640_000_000  # over the 500 MB / 300 s of ddos-bytes-out
FLOOD_DATAGRAM = 60_000
EXFIL_BYTES = 250_000_000  # over 40 MB / 300 s for three reports, under the DDoS line
EXFIL_RATE = 15_000_000  # bytes per second
SCAN_TARGETS = 120  # over the 50 established connections of scan-connections
MAX_SECONDS = 60.0


class LiveAttack:
    name = ""
    expected: Tuple[str, ...] = ()  # behaviors of the fleet profile this attack should break
    silences = False  # the runner stops the device's agent instead
    transient = False  # over after a moment: its alarm clears at the next report

    def __init__(self, netns: str, gateway: str):
        self.netns, self.gateway = netns, gateway
        self.sockets: List[socket.socket] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _socket(self, kind=socket.SOCK_STREAM) -> socket.socket:
        with inside(self.netns):
            sock = socket.socket(socket.AF_INET, kind)
        self.sockets.append(sock)
        return sock

    def start(self) -> None:
        self.open()
        if type(self).loop is not LiveAttack.loop:
            self._thread = threading.Thread(target=self._run_loop, name=f"attack-{self.name}", daemon=True)
            self._thread.start()

    def _run_loop(self) -> None:
        try:
            self.loop(time.monotonic() + MAX_SECONDS)
        except OSError:
            pass  # the namespace went away under us: the run is ending

    def open(self) -> None:
        """Create the attack's sockets (in the device namespace)."""

    def loop(self, deadline: float) -> None:
        """Traffic, if any; must return by `deadline` or when `self._stop` is set."""

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for sock in self.sockets:
            sock.close()


class Backdoor(LiveAttack):
    name = "backdoor"
    expected = ("backdoor-tcp-ports",)

    def open(self):
        listener = self._socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", BACKDOOR_PORT))
        listener.listen(5)


class Ddos(LiveAttack):
    name = "ddos"
    expected = ("ddos-bytes-out",)

    def open(self):
        self.udp = self._socket(socket.SOCK_DGRAM)

    def loop(self, deadline):
        datagram = b"\xff" * FLOOD_DATAGRAM
        target = (self.gateway, FLOOD_PORT)
        while self.sent < FLOOD_BYTES and time.monotonic() < deadline and not self._stop.is_set():
            try:
                self.sent += self.udp.sendto(datagram, target)
            except (ConnectionRefusedError, BlockingIOError):
                pass  # an ICMP error from an earlier datagram: keep flooding


class CommandAndControl(LiveAttack):
    name = "c2"
    expected = ("c2-destinations",)

    def open(self):
        self.session = self._socket()
        self.session.settimeout(5)
        self.session.connect((C2_SERVER, C2_PORT))

    def loop(self, deadline):
        while time.monotonic() < deadline and not self._stop.wait(0.5):
            self.sent += self.session.send(b"BEACON " + str(time.time()).encode() + b"\n")


class Scan(LiveAttack):
    name = "scan"
    expected = ("scan-connections",)

    def open(self):
        for host in range(1, SCAN_TARGETS + 1):
            sock = self._socket()
            sock.settimeout(5)
            sock.connect((f"10.213.200.{host}", SCAN_PORT))


class Exfiltration(LiveAttack):
    name = "exfil"
    expected = ("exfil-sustained-bytes-out",)

    def open(self):
        self.session = self._socket()
        self.session.settimeout(5)
        self.session.connect((self.gateway, EXFIL_PORT))

    def loop(self, deadline):
        chunk = b"\x00" * (EXFIL_RATE // 10)
        started = time.monotonic()
        while self.sent < EXFIL_BYTES and time.monotonic() < deadline and not self._stop.is_set():
            self.session.sendall(chunk)
            self.sent += len(chunk)
            ahead = started + self.sent / EXFIL_RATE - time.monotonic()  # pace to EXFIL_RATE
            if ahead > 0:
                self._stop.wait(ahead)


class Silent(LiveAttack):
    """The device stops reporting (the runner stops its agent): aws:disconnect-duration, which the
    engine measures as the time since the thing's last accepted report."""

    name = "silent"
    expected = ("silent-device",)
    silences = True


class Beacon(LiveAttack):
    """Command and control that is never open at a snapshot: connect, check in, hang up, every
    BEACON_PERIOD s (the issue's "one second every 20 s at a 60 s interval", scaled to the runner's
    2 s reports: the session lasts milliseconds, so a snapshot almost never sees it). Only the
    agent's socket events (collectors.sockevents) catch it."""

    name = "beacon"
    expected = ("c2-destinations",)
    period = 1.0

    def loop(self, deadline):
        while time.monotonic() < deadline and not self._stop.is_set():
            with inside(self.netns):
                session = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with session:
                session.settimeout(5)
                session.connect((C2_SERVER, C2_PORT))
                self.sent += session.send(b"BEACON " + str(time.time()).encode() + b"\n")
            self._stop.wait(self.period)


class ShortListener(LiveAttack):
    """A backdoor listener open for a moment between two reports (the issue's 5 s between 60 s
    reports, scaled to the runner's 2 s: HOLD s), once: no snapshot is taken while it listens."""

    name = "short-listener"
    expected = ("backdoor-tcp-ports",)
    transient = True
    hold = 0.03

    def loop(self, deadline):
        with inside(self.netns):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("0.0.0.0", BACKDOOR_PORT + 1))
            listener.listen(5)
            self._stop.wait(self.hold)


LIVE_ATTACKS = {
    cls.name: cls for cls in (Backdoor, Ddos, CommandAndControl, Scan, Exfiltration, Silent, Beacon, ShortListener)
}
DEFAULT_SCENARIOS = tuple(LIVE_ATTACKS)
