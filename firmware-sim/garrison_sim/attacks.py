"""Attack scenarios injected into simulated devices, and the SCENARIO@DEVICE@TIME syntax.

Every address an attack adds is in a documentation range (RFC 5737) and exists only inside the
simulated report: the C2 "servers" are in 203.0.113.0/24, the exfiltration sink in 192.0.2.0/24.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Type

from garrison.collectors.base import Connection, ListeningSocket

C2_RANGE = "203.0.113.0/24"
EXFIL_SINK = ("192.0.2.77", 443)
BACKDOOR_PORTS = (2323, 4444, 31337)


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "30m", "2h", "1d" (or combinations like "1h30m")."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r} (use e.g. 300, 90s, 30m, 2h, 1d)")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


class Attack:
    """One scenario running on one device from `start` (simulated epoch seconds) until `end`."""

    name = ""
    description = ""
    silences = False

    def __init__(self, start: float, end: Optional[float] = None):
        self.start, self.end = start, end

    def active(self, now: float) -> bool:
        return now >= self.start and (self.end is None or now < self.end)

    def apply(self, obs, device, elapsed: float) -> None:
        """Change what the device's collectors see over the `elapsed` seconds before a report."""


class Ddos(Attack):
    name = "ddos"
    description = "botnet DDoS participation: a flood of small packets out (3-8 MB/s)"

    def apply(self, obs, device, elapsed):
        obs.add_traffic(bytes_out=device.rng.uniform(3e6, 8e6) * elapsed, packet_bytes=90)


class Backdoor(Attack):
    name = "backdoor"
    description = "a backdoor listening on a new TCP port"

    def apply(self, obs, device, elapsed):
        port = BACKDOOR_PORTS[sum(device.name.encode()) % len(BACKDOOR_PORTS)]
        obs.listening_tcp.append(ListeningSocket("tcp", 4, "0.0.0.0", port))


class CommandAndControl(Attack):
    name = "c2"
    description = f"a connection to a command-and-control server in {C2_RANGE}, small beacons"

    def apply(self, obs, device, elapsed):
        net = ipaddress.ip_network(C2_RANGE)
        server = str(net[1 + sum(device.name.encode()) % (net.num_addresses - 2)])
        obs.connections.append(Connection(4, "10.0.0.2", 49152 + len(device.name), server, 443))
        obs.add_traffic(bytes_out=40 * elapsed, bytes_in=60 * elapsed, packet_bytes=120)


class Scan(Attack):
    name = "scan"
    description = "scanning: a burst of outbound telnet connections to hundreds of addresses"

    def apply(self, obs, device, elapsed):
        rng = device.rng
        for i in range(rng.randint(150, 400)):
            target = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            obs.connections.append(Connection(4, "10.0.0.2", 33000 + i, target, rng.choice((23, 2323))))
        obs.add_traffic(bytes_out=2_000 * elapsed, bytes_in=1_000 * elapsed, packet_bytes=60)


class Exfiltration(Attack):
    name = "exfil"
    description = "slow exfiltration: a steady 150-300 KB/s out to one unknown host"

    def apply(self, obs, device, elapsed):
        obs.connections.append(Connection(4, "10.0.0.2", 51515, *EXFIL_SINK))
        obs.add_traffic(bytes_out=device.rng.uniform(150e3, 300e3) * elapsed, packet_bytes=1400)


class Silent(Attack):
    name = "silent"
    description = "the device goes silent: no more reports"
    silences = True


SCENARIOS: Dict[str, Type[Attack]] = {
    cls.name: cls for cls in (Ddos, Backdoor, CommandAndControl, Scan, Exfiltration, Silent)
}


@dataclass(frozen=True)
class AttackSpec:
    """A parsed SCENARIO@DEVICE@TIME[+DURATION]; TIME and DURATION are simulated seconds."""

    scenario: str
    device: str
    at: float
    duration: Optional[float] = None

    @classmethod
    def parse(cls, text: str) -> "AttackSpec":
        parts = text.split("@")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"bad attack {text!r} (expected SCENARIO@DEVICE@TIME, e.g. backdoor@camera-0001@2h)")
        scenario, device, when = parts
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (choose from {', '.join(SCENARIOS)})")
        when, _, length = when.partition("+")
        return cls(scenario, device, parse_duration(when), parse_duration(length) if length else None)

    def make(self, sim_start: float) -> Attack:
        start = sim_start + self.at
        return SCENARIOS[self.scenario](start, None if self.duration is None else start + self.duration)


def describe() -> List[str]:
    return [f"{name:9} {cls.description}" for name, cls in SCENARIOS.items()]
