"""Helpers for the firmware-sim tests: where firmware-sim is, and a real MQTT subscriber that keeps
every report (and reply) published on a broker."""
import threading
from collections import defaultdict
from pathlib import Path

from garrison.agent import report as wire
from garrison.wire import schema

from garrison.sim import mqtt

import fixtures

FIRMWARE_SIM = Path(__file__).resolve().parents[2] / "firmware-sim"


class ReportLog:
    """Subscribes to all Device Defender topics; `reports[thing]` is a list of long-name reports."""

    def __init__(self, url: str, topics=("$aws/things/+/defender/metrics/+",)):
        self.reports = defaultdict(list)
        self.replies = defaultdict(list)
        self.count = 0
        self._lock = threading.Lock()
        self.client = mqtt.connect(url)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, _client, _userdata, message):
        parts = message.topic.split("/")
        thing, fmt = parts[2], parts[5]
        doc = wire.decode(message.payload, fmt)
        with self._lock:
            if len(parts) == 6:
                self.reports[thing].append(schema.to_long(doc))
                self.count += 1
            else:
                self.replies[thing].append((parts[6], doc))

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        """Whether `predicate(self)` came true within `timeout`."""
        def holds():
            with self._lock:
                return predicate(self)
        try:
            return bool(fixtures.wait_for(holds, timeout, "the observed reports"))
        except AssertionError:
            return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
