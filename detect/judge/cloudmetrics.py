"""The cloud-side metrics: what the broker saw each thing do, per thing and per window.

AWS IoT Core measures these itself; Garrison measures them from the broker's log
(garrison.detect.ingest.brokerlog). `BrokerView.feed(event)` is called by the log follower's
thread; the engine asks `value(thing, metric, duration_s, now_ms)` when it evaluates
(garrison.detect.engine.Engine.evaluate_cloud_metrics). The thing is the MQTT client id, which
broker-config pins to the certificate's CN (`use_username_as_clientid`), i.e. the thing name.

Values over the window (now - durationSeconds, now] (300 s when the behavior names none):
  aws:num-connection-attempts     CONNECTs that reached the broker's identity check (accepted or refused)
  aws:num-disconnects             connections that ended (clean, dropped, timed out, taken over)
  aws:num-authorization-failures  publishes the ACL denied, plus refused CONNECTs
  aws:num-messages-sent           PUBLISHes the device sent that the broker accepted
  aws:num-messages-received       PUBLISHes the broker sent to the device
  aws:message-byte-size           the largest payload the device sent (bytes); no datapoint without messages
  aws:source-ip-address           the addresses the device connected from (its current one included;
                                  none: an empty list, which conforms)
  aws:disconnect-duration         (the engine's sweep) whole minutes since the connection ended, 0 while
                                  connected; a thing the view has not seen is measured by report silence

Memory is bounded: at most MAX_EVENTS_PER_THING events per thing and nothing older than the
longest duration AWS allows (3600 s) is kept; things with neither events nor a live connection are
dropped. Everything here is in memory: after an engine restart the windows fill up again.
"""

import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from garrison.detect.ingest import brokerlog

DEFAULT_DURATION_S = 300
KEEP_MS = 3600 * 1000
MAX_EVENTS_PER_THING = 50000
MAX_THINGS = 200000

COUNTED = {
    "aws:num-connection-attempts": (brokerlog.CONNECT, brokerlog.CONNECT_REFUSED),
    "aws:num-disconnects": (brokerlog.DISCONNECT, brokerlog.TAKEOVER),
    "aws:num-authorization-failures": (brokerlog.PUBLISH_DENIED, brokerlog.CONNECT_REFUSED),
    "aws:num-messages-sent": (brokerlog.PUBLISH_IN,),
    "aws:num-messages-received": (brokerlog.PUBLISH_OUT,),
}
MESSAGE_BYTE_SIZE = "aws:message-byte-size"
SOURCE_IP = "aws:source-ip-address"
# the metrics a broker view computes in the window (aws:disconnect-duration is the sweep's)
WINDOW_METRICS = tuple(COUNTED) + (MESSAGE_BYTE_SIZE, SOURCE_IP)
# metrics whose events carry a topic: the ones a TOPIC_FILTER dimension applies to
TOPIC_METRICS = (
    "aws:num-messages-sent",
    "aws:num-messages-received",
    "aws:num-authorization-failures",
    MESSAGE_BYTE_SIZE,
)


class _Thing:
    __slots__ = ("events", "connected", "since_ms", "address")

    def __init__(self) -> None:
        self.events: Deque[Tuple[int, str, Optional[str], Any, int]] = deque(maxlen=MAX_EVENTS_PER_THING)
        self.connected: Optional[bool] = None
        self.since_ms = 0
        self.address: Optional[str] = None


class BrokerView:
    """Per-thing broker events in memory; thread-safe (one feeding thread, readers elsewhere)."""

    def __init__(self, now_ms: Callable[[], int], source: str = "mosquitto-log", has_topics: bool = True):
        self.now_ms = now_ms
        self.source = source
        # False when the source sees counts but no topics (NATS's /connz): a metricDimension gets no datapoint
        self.has_topics = has_topics
        self._things: Dict[str, _Thing] = {}
        self._lock = threading.Lock()
        self.events = 0

    def feed(self, event: "brokerlog.BrokerEvent") -> None:
        time_ms = event.time_s * 1000 if event.time_s is not None else self.now_ms()
        with self._lock:
            thing = self._things.get(event.client)
            if thing is None:
                if len(self._things) >= MAX_THINGS:
                    self._forget_idle(time_ms)
                    if len(self._things) >= MAX_THINGS:
                        return
                thing = self._things[event.client] = _Thing()
            self.events += 1
            kind = event.kind
            if kind == brokerlog.CONNECT:
                thing.connected, thing.since_ms, thing.address = True, time_ms, event.address
                thing.events.append((time_ms, kind, None, event.address, 1))
            elif kind in (brokerlog.DISCONNECT, brokerlog.TAKEOVER):
                if thing.connected is not False:
                    thing.connected, thing.since_ms = False, time_ms
                thing.events.append((time_ms, kind, None, None, event.count))
            else:
                thing.events.append((time_ms, kind, event.topic, event.size, event.count))
            events = thing.events
            while events and events[0][0] <= time_ms - KEEP_MS:
                events.popleft()

    def _forget_idle(self, now_ms: int) -> None:
        for name in [
            n
            for n, t in self._things.items()
            if not t.connected and (not t.events or t.events[-1][0] <= now_ms - KEEP_MS)
        ]:
            del self._things[name]

    def knows(self, thing: str) -> bool:
        with self._lock:
            return thing in self._things and self._things[thing].connected is not None

    def connection(self, thing: str) -> Optional[Tuple[bool, int]]:
        """(connected, since when in ms) as the log last showed it; None if never seen."""
        with self._lock:
            known = self._things.get(thing)
            if known is None or known.connected is None:
                return None
            return known.connected, known.since_ms

    def value(
        self,
        thing: str,
        metric: str,
        duration_s: Optional[int],
        now_ms: int,
        topic_matches: Optional[Callable[[str], bool]] = None,
    ) -> Any:
        """The metric's value for `thing` over (now - duration, now]; None for no datapoint.
        `topic_matches` keeps only events whose topic it accepts (a metricDimension)."""
        start = now_ms - (duration_s or DEFAULT_DURATION_S) * 1000
        with self._lock:
            known = self._things.get(thing)
            window = [e for e in known.events if start < e[0] <= now_ms] if known else []
            current = known.address if known is not None and known.connected else None
        if topic_matches is not None:
            if not self.has_topics:
                return None
            window = [e for e in window if e[2] is not None and topic_matches(e[2])]
        if metric in COUNTED:
            kinds = COUNTED[metric]
            return sum(e[4] for e in window if e[1] in kinds)
        if metric == MESSAGE_BYTE_SIZE:
            sizes = [e[3] for e in window if e[1] == brokerlog.PUBLISH_IN and e[3] is not None]
            return max(sizes) if sizes else None
        if metric == SOURCE_IP:
            addresses = {e[3] for e in window if e[1] == brokerlog.CONNECT and e[3]}
            if current:
                addresses.add(current)
            return sorted(_canonical(a) for a in addresses)  # empty: conforms, clears an alarm
        raise KeyError(metric)

    def things(self) -> List[str]:
        with self._lock:
            return sorted(self._things)


def _canonical(address: str) -> str:
    """Mosquitto prints IPv6 without brackets and IPv4-mapped ones as ::ffff:a.b.c.d."""
    if address.startswith("::ffff:") and address.count(".") == 3:
        return address[len("::ffff:") :]
    return address.strip("[]")
