"""Virtual devices: what a camera, a gateway or a sensor looks like to the kernel, hour by hour.

Each device type has stable listening ports, a few cloud endpoints it keeps connections to and a
daily traffic rhythm. A `VirtualDevice` turns the simulated time since its previous report into
an `Observation` (the same records the real collectors return), which attacks may then alter
before `garrison.agent.report.build` makes the report.
"""

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from garrison.agent import report as wire
from garrison.wire import schema
from garrison.collectors.base import Connection, ListeningSocket

# Cloud endpoints live in TEST-NET-2 (RFC 5737): they appear in simulated reports only.
CLOUD_MQTT = ("198.51.100.10", 8883)
CLOUD_API = ("198.51.100.20", 443)
CLOUD_VIDEO = ("198.51.100.30", 443)
CLOUD_UPDATES = ("198.51.100.40", 443)

DEFAULT_INTERVAL = 300.0  # seconds between reports, as AWS expects
INTERVAL_JITTER = 0.1  # +-10%, as real agents drift


@dataclass(frozen=True)
class DeviceType:
    name: str
    tcp_ports: Tuple[int, ...]
    udp_ports: Tuple[int, ...]
    cloud: Tuple[Tuple[str, int], ...]  # endpoints kept connected
    bytes_out_per_s: float  # daily mean
    bytes_in_per_s: float
    peak_hour: float  # local hour of the daily traffic peak
    swing: float  # 0..1, depth of the daily rhythm
    packet_bytes: int = 1200  # mean packet size, for packet counts
    lan_clients: Tuple[int, int] = (0, 0)  # inbound LAN connections (min, max), gateways only
    interface: str = "eth0"


DEVICE_TYPES: Dict[str, DeviceType] = {
    t.name: t
    for t in (
        # An IP camera: web UI and RTSP, ONVIF discovery; uploads motion clips, busy by day.
        DeviceType(
            "camera",
            (80, 554),
            (3702,),
            (CLOUD_MQTT, CLOUD_VIDEO),
            bytes_out_per_s=8_000,
            bytes_in_per_s=1_500,
            peak_hour=14,
            swing=0.6,
            packet_bytes=1300,
        ),
        # A home/industrial gateway: SSH, HTTPS admin, a local MQTT broker for its sensors, DNS/DHCP/NTP.
        DeviceType(
            "gateway",
            (22, 443, 1883),
            (53, 67, 123, 5353),
            (CLOUD_MQTT, CLOUD_API, CLOUD_UPDATES),
            bytes_out_per_s=4_000,
            bytes_in_per_s=6_000,
            peak_hour=20,
            swing=0.5,
            packet_bytes=700,
            lan_clients=(4, 12),
            interface="br-lan",
        ),
        # A battery sensor: CoAP only, one MQTT connection, a trickle of data.
        DeviceType(
            "sensor",
            (),
            (5683,),
            (CLOUD_MQTT,),
            bytes_out_per_s=60,
            bytes_in_per_s=40,
            peak_hour=12,
            swing=0.2,
            packet_bytes=180,
            interface="wlan0",
        ),
    )
}

# Every port any device type listens on: the fleet profile's allow-lists.
ALLOWED_TCP_PORTS = sorted({p for t in DEVICE_TYPES.values() for p in t.tcp_ports})
ALLOWED_UDP_PORTS = sorted({p for t in DEVICE_TYPES.values() for p in t.udp_ports})


@dataclass
class Observation:
    """What the collectors would see on the device for one report interval."""

    listening_tcp: List[ListeningSocket]
    listening_udp: List[ListeningSocket]
    connections: List[Connection]
    network_stats: Dict[str, int]

    def add_traffic(self, bytes_out: float = 0, bytes_in: float = 0, packet_bytes: int = 1200) -> None:
        stats = self.network_stats
        stats["bytes_out"] += int(bytes_out)
        stats["bytes_in"] += int(bytes_in)
        stats["packets_out"] += int(bytes_out // packet_bytes)
        stats["packets_in"] += int(bytes_in // packet_bytes)


def daily_factor(hour: float, peak_hour: float, swing: float) -> float:
    """Traffic multiplier at a local hour: 1 + swing at the peak, 1 - swing twelve hours later."""
    return 1.0 + swing * math.cos(2 * math.pi * (hour - peak_hour) / 24.0)


@dataclass
class VirtualDevice:
    name: str
    kind: DeviceType
    rng: random.Random
    interval: float = DEFAULT_INTERVAL
    utc_offset_hours: float = 0.0
    report_id: int = 0
    reports_sent: int = 0
    last_report_at: Optional[float] = None  # simulated epoch seconds
    attacks: list = field(default_factory=list)  # attacks.Attack instances, started or not
    _ephemeral: Dict[Tuple[str, int], int] = field(default_factory=dict)

    def next_delay(self) -> float:
        """Seconds until the next report: the interval with jitter."""
        return self.interval * self.rng.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)

    def silent(self, now: float) -> bool:
        return any(a.active(now) and a.silences for a in self.attacks)

    def observe(self, now: float, elapsed: float) -> Observation:
        """Normal behaviour over the `elapsed` simulated seconds ending at `now`."""
        kind, rng = self.kind, self.rng
        tcp = [ListeningSocket("tcp", 4, "0.0.0.0", p) for p in kind.tcp_ports]
        udp = [ListeningSocket("udp", 4, "0.0.0.0", p) for p in kind.udp_ports]
        local = f"10.{zlib.crc32(self.name.encode()) % 200}.0.2"
        conns = [Connection(4, local, self._local_port(ep), ep[0], ep[1], kind.interface) for ep in kind.cloud]
        lo, hi = kind.lan_clients
        for i in range(rng.randint(lo, hi) if hi else 0):
            conns.append(Connection(4, "192.168.1.1", 1883, f"192.168.1.{20 + i}", 40000 + i, kind.interface))
        hour = ((now / 3600.0) + self.utc_offset_hours) % 24
        factor = daily_factor(hour, kind.peak_hour, kind.swing) * rng.lognormvariate(0, 0.25)
        obs = Observation(tcp, udp, conns, {k: 0 for k in schema.NETWORK_STATS_KEYS})
        if elapsed > 0:
            obs.add_traffic(
                kind.bytes_out_per_s * factor * elapsed, kind.bytes_in_per_s * factor * elapsed, kind.packet_bytes
            )
        return obs

    def _local_port(self, endpoint: Tuple[str, int]) -> int:
        """Ephemeral ports stay while a connection lives; now and then it reconnects on a new one."""
        if endpoint not in self._ephemeral or self.rng.random() < 0.02:
            self._ephemeral[endpoint] = self.rng.randint(32768, 60999)
        return self._ephemeral[endpoint]

    def make_report(self, now: float) -> dict:
        """The long-name report for simulated time `now`, attacks applied; advances the report id."""
        # A device's first report carries zeroed deltas, like a freshly started agent.
        elapsed = 0.0 if self.last_report_at is None else now - self.last_report_at
        obs = self.observe(now, elapsed)
        for attack in self.attacks:
            if attack.active(now):
                attack.apply(obs, self, elapsed)
        self.report_id = wire.next_report_id(self.report_id, now_ms=int(now * 1000))
        self.last_report_at = now
        self.reports_sent += 1
        return wire.build(
            self.report_id,
            listening_tcp=obs.listening_tcp,
            listening_udp=obs.listening_udp,
            connections=obs.connections,
            network_stats=obs.network_stats,
        )
