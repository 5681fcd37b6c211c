"""A simulated fleet: thousands of virtual devices reporting through a few MQTT clients.

One thread walks a heap of (next report time, device) on a simulated clock that can run faster
than the wall clock, so days of reports pass in minutes; report ids and the traffic rhythm follow
the simulated clock. Publishing is QoS 1 through `clients` paho connections (the broker does not
care which connection a thing's topic arrives on).
"""

import heapq
import logging
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import paho.mqtt.client as paho

from garrison.agent import report as wire
from garrison.wire import topics

from . import mqtt
from .attacks import AttackSpec
from .devices import DEFAULT_INTERVAL, DEVICE_TYPES, VirtualDevice

log = logging.getLogger("garrison.sim.fleet")


class SimClock:
    """Simulated epoch seconds: `start` plus wall time elapsed times `accelerate`.

    accelerate == 0 means "as fast as possible": the clock is driven by the schedule itself.
    """

    def __init__(self, accelerate: float = 1.0, start: Optional[float] = None):
        if accelerate < 0:
            raise ValueError("--accelerate must be 0 (as fast as possible) or more")
        self.accelerate = accelerate
        self.start = time.time() if start is None else start
        self._wall0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._wall0) * self.accelerate

    def wall_delay(self, sim_time: float) -> float:
        """Wall seconds until the simulated clock reaches `sim_time` (0 when free-running)."""
        if self.accelerate == 0:
            return 0.0
        return max(0.0, (sim_time - self.now()) / self.accelerate)


@dataclass
class Summary:
    devices: int = 0
    reports: int = 0
    payload_bytes: int = 0
    silenced_reports: int = 0  # reports a silent device did not send
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    max_lag_s: float = 0.0  # simulated seconds a report went out late (too many devices)
    accepted: int = 0
    rejected: int = 0
    per_device: Dict[str, int] = field(default_factory=dict)

    def lines(self) -> List[str]:
        rate = self.reports / self.wall_seconds if self.wall_seconds else 0.0
        out = [
            f"devices {self.devices}, reports {self.reports} ({self.payload_bytes / 1e6:.1f} MB), "
            f"simulated {self.sim_seconds / 3600:.2f} h in {self.wall_seconds:.1f} s wall, {rate:.0f} reports/s",
            f"withheld by silent devices: {self.silenced_reports}; "
            f"worst lag behind schedule: {self.max_lag_s:.1f} s simulated",
        ]
        if self.accepted or self.rejected:
            out.append(f"engine replies: {self.accepted} accepted, {self.rejected} rejected")
        return out


def device_names(count: int, types: Sequence[str]) -> List[tuple]:
    """(name, type) pairs, types dealt round-robin, numbered per type: camera-0001, gateway-0001..."""
    per_type: Dict[str, int] = {}
    out = []
    for i in range(count):
        kind = types[i % len(types)]
        per_type[kind] = per_type.get(kind, 0) + 1
        out.append((f"{kind}-{per_type[kind]:04d}", kind))
    return out


class Fleet:
    def __init__(
        self,
        count: int,
        types: Sequence[str] = ("camera", "gateway", "sensor"),
        seed: Optional[int] = None,
        interval: float = DEFAULT_INTERVAL,
        attacks: Iterable[AttackSpec] = (),
        start: Optional[float] = None,
        prefix: str = "",
    ):
        if count < 1:
            raise ValueError("--devices must be at least 1")
        unknown = [t for t in types if t not in DEVICE_TYPES]
        if unknown or not types:
            raise ValueError(
                f"unknown device type {', '.join(unknown) or '(none)'} (choose from {', '.join(DEVICE_TYPES)})"
            )
        if interval <= 0:
            raise ValueError("--interval must be positive")
        self.start = time.time() if start is None else start
        self.prefix = prefix
        rng = random.Random(seed)
        self.devices: List[VirtualDevice] = []
        for name, kind in device_names(count, list(types)):
            self.devices.append(
                VirtualDevice(
                    prefix + name,
                    DEVICE_TYPES[kind],
                    random.Random(rng.getrandbits(64)),
                    interval,
                    utc_offset_hours=rng.choice((-8, -5, 0, 1, 8)),
                )
            )
        self.by_name = {d.name: d for d in self.devices}
        self._first_at = {d.name: self.start + rng.uniform(0, interval) for d in self.devices}
        for spec in attacks:
            self.device(spec.device).attacks.append(spec.make(self.start))
        self._stop = threading.Event()

    def device(self, ref: str) -> VirtualDevice:
        """A device by name (with or without the fleet's prefix) or by 0-based index."""
        found = self.by_name.get(ref) or self.by_name.get(self.prefix + ref)
        if found:
            return found
        if ref.isdigit() and int(ref) < len(self.devices):
            return self.devices[int(ref)]
        raise ValueError(f"no device {ref!r} in the fleet (names look like {self.devices[0].name})")

    def stop(self) -> None:
        self._stop.set()

    def run(
        self,
        publish: Callable[[str, bytes], None],
        duration: float,
        accelerate: float = 1.0,
        fmt: str = "json",
        short_names: bool = False,
    ) -> Summary:
        """Report for `duration` simulated seconds; `publish(topic, payload)` sends one report."""
        clock = SimClock(accelerate, self.start)
        end = self.start + duration
        heap = [(self._first_at[d.name], i) for i, d in enumerate(self.devices)]
        heapq.heapify(heap)
        summary = Summary(devices=len(self.devices))
        wall0 = time.monotonic()
        announced = set()
        while heap and not self._stop.is_set():
            due, index = heap[0]
            if due > end:
                break
            delay = clock.wall_delay(due)
            if delay > 0:
                self._stop.wait(min(delay, 0.5))
                continue
            heapq.heappop(heap)
            device = self.devices[index]
            if accelerate:
                summary.max_lag_s = max(summary.max_lag_s, clock.now() - due)
            for attack in device.attacks:
                if attack.active(due) and id(attack) not in announced:
                    announced.add(id(attack))
                    log.info("attack %s starts on %s at +%.0f s simulated", attack.name, device.name, due - self.start)
            if device.silent(due):
                summary.silenced_reports += 1
            else:
                payload = wire.encode(device.make_report(due), fmt, short_names)
                publish(wire.topic(device.name, fmt), payload)
                summary.reports += 1
                summary.payload_bytes += len(payload)
            heapq.heappush(heap, (due + device.next_delay(), index))
        summary.sim_seconds = min(end, clock.now() if accelerate else end) - self.start
        summary.wall_seconds = time.monotonic() - wall0
        summary.per_device = {d.name: d.reports_sent for d in self.devices}
        return summary


class Publisher:
    """`clients` MQTT connections; devices are spread over them (each keeps one). Counts engine replies.

    At most `window` QoS 1 messages are unacknowledged at a time (paho's message ids wrap at
    65535, and an unbounded queue would only hide that the broker cannot keep up).
    """

    def __init__(self, broker: str, clients: int = 1, watch_replies: bool = True, qos: int = 1, window: int = 5000):
        self.qos = qos
        self.accepted = 0
        self.rejected = 0
        self._window = window
        self._aborted = threading.Event()
        self._unacked = 0
        self._acked = threading.Condition()
        self._clients = [mqtt.connect(broker) for _ in range(max(1, clients))]
        for client in self._clients:
            client.on_publish = self._on_publish
        if watch_replies:
            watcher = self._clients[0]
            watcher.on_message = self._on_reply
            watcher.subscribe(
                [(topics.reply_filter(outcome="accepted"), 0), (topics.reply_filter(outcome="rejected"), 0)]
            )

    def _on_publish(self, *_args):  # paho 1.6 and 2.x pass different extra arguments
        with self._acked:
            self._unacked -= 1
            self._acked.notify_all()

    def _on_reply(self, _client, _userdata, message):
        if message.topic.endswith("/accepted"):
            self.accepted += 1
        else:
            self.rejected += 1

    def __call__(self, topic: str, payload: bytes) -> None:
        with self._acked:
            while self._unacked >= self._window:
                if self._aborted.is_set():
                    return  # stopping while the broker is away: nothing more to send
                self._acked.wait(0.5)
            self._unacked += 1
        # One device always uses the same connection, so its reports arrive in order.
        client = self._clients[zlib.crc32(topic.encode()) % len(self._clients)]
        info = client.publish(topic, payload, qos=self.qos)
        # NO_CONN: paho keeps the QoS 1 message and sends it once it has reconnected
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            with self._acked:
                self._unacked -= 1
            raise mqtt.BrokerError(f"publish failed: {info.rc}")

    def abort(self) -> None:
        """Stop waiting for the broker (Ctrl-C while it is away)."""
        self._aborted.set()
        with self._acked:
            self._acked.notify_all()

    def close(self, timeout: float = 30.0, linger: float = 0.0) -> None:
        """Wait until everything published has been acknowledged, then disconnect."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while self._unacked > 0 and time.monotonic() < deadline and not self._aborted.is_set():
                self._acked.wait(0.2)
        if linger:
            time.sleep(linger)  # let the last engine replies arrive
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
