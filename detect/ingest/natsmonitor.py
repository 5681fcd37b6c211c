"""NATS's monitoring endpoint, read as what the broker saw each MQTT client do: the second adapter
(beside the Mosquitto log, garrison.detect.ingest.brokerlog) feeding the cloud-side metrics'
BrokerView the same BrokerEvents.

Each node of the cluster is polled (`GET /connz?state=all&auth=1`, paged); a connection is one
entry per node and cid. Checked against nats-server 2.9.10 with MQTT clients:
  type "mqtt", mqtt_client = the MQTT client id (the thing), ip = its source address,
  start / stop = when it connected / ended (RFC 3339, ns), reason = why it ended
  ("Client Closed", "Authentication Failure", ...; closed connections stay listed in a ring
  of `max_closed_clients`, 10000 by default), in_msgs / out_msgs = PUBLISHes from / to the client.
  in_msgs counts the publishes the server then denied ("Publish Violation" is only in the
  server's log, the connection stays open); in_bytes / out_bytes include NATS headers, so there is
  no per-message payload size.

Mapping onto the events:
  a connection seen for the first time     CONNECT (at its start, with its ip), or CONNECT_REFUSED
                                           when it ended with "Authentication Failure" / "Authorization Violation"
  a connection that ended                  DISCONNECT (at its stop; at the poll when it left the ring unseen)
  growth of in_msgs / out_msgs             PUBLISH_IN / PUBLISH_OUT with count = the growth, at the poll
So the metrics are exact for connections and attempts (start/stop times come from the server, a
reconnect loop faster than the poll is counted in full while the closed ring holds it) and exact to
the poll interval for message counts; they carry no topic (metricDimension: no datapoint) and no size.

What was counted before the engine started is not re-counted (the first poll is a baseline for
the message counters, as the log follower starts at the end of the file); connections and their
ends are placed at their own times. Work per poll is bounded: MAX_PAGES pages of PAGE connections
per node, and the per-node state holds only connections the node still lists.
"""

import json
import logging
import re
import threading
import urllib.request
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Set, Tuple

from garrison.detect.ingest.brokerlog import CONNECT, CONNECT_REFUSED, DISCONNECT, PUBLISH_IN, PUBLISH_OUT, BrokerEvent

log = logging.getLogger("garrison.natsmonitor")

PAGE = 1024
MAX_PAGES = 64  # per node and poll: 65536 connections (open and recently closed)
MAX_BODY = 64 * 1024 * 1024
REFUSED_REASONS = ("Authentication Failure", "Authorization Violation")
MAX_CLIENT_ID = 256
# the metrics this source computes (aws:message-byte-size is not: no per-message size)
METRICS = (
    "aws:num-connection-attempts",
    "aws:num-disconnects",
    "aws:num-authorization-failures",
    "aws:num-messages-sent",
    "aws:num-messages-received",
    "aws:source-ip-address",
)

_FRACTION = re.compile(r"\.\d+")


def parse_time(text: Optional[str]) -> Optional[int]:
    """Epoch seconds of an RFC 3339 time as NATS writes it (nanoseconds, `Z`); None if unreadable."""
    if not text or len(text) > 64:
        return None
    try:
        return int(
            datetime.fromisoformat(_FRACTION.sub("", text, count=1).replace("Z", "+00:00"))
            .astimezone(timezone.utc)
            .timestamp()
        )
    except ValueError:
        return None


class _Conn:
    __slots__ = ("client", "in_msgs", "out_msgs", "closed")

    def __init__(self, client: str, in_msgs: int, out_msgs: int):
        self.client, self.in_msgs, self.out_msgs, self.closed = client, in_msgs, out_msgs, False


class NodeTracker:
    """The connections one node lists, turned into events by comparing one listing with the last."""

    def __init__(self) -> None:
        self.conns: Dict[int, _Conn] = {}
        self.baseline = True  # the first listing: message counters are a baseline, not events

    def update(self, connections: List[dict], now_s: int) -> List[BrokerEvent]:
        events: List[BrokerEvent] = []
        listed: Set[int] = set()
        for entry in connections:
            if not isinstance(entry, dict) or entry.get("type") != "mqtt":
                continue  # the engine's own NATS clients, routes, leaf nodes
            cid, client = entry.get("cid"), entry.get("mqtt_client")
            if not isinstance(cid, int) or not isinstance(client, str) or not 0 < len(client) <= MAX_CLIENT_ID:
                continue
            listed.add(cid)
            in_msgs, out_msgs = _count(entry.get("in_msgs")), _count(entry.get("out_msgs"))
            closed = bool(entry.get("stop"))
            known = self.conns.get(cid)
            if known is None:
                refused = closed and entry.get("reason") in REFUSED_REASONS
                events.append(
                    BrokerEvent(
                        CONNECT_REFUSED if refused else CONNECT,
                        client,
                        parse_time(entry.get("start")) or now_s,
                        address=_address(entry.get("ip")),
                        port=_count(entry.get("port")) or None,
                    )
                )
                known = self.conns[cid] = _Conn(client, 0, 0) if not self.baseline else _Conn(client, in_msgs, out_msgs)
                known.closed = refused  # a refused connection never ends: it never began
            for kind, grown in ((PUBLISH_IN, in_msgs - known.in_msgs), (PUBLISH_OUT, out_msgs - known.out_msgs)):
                if grown > 0:
                    events.append(BrokerEvent(kind, known.client, now_s, count=grown))
            known.in_msgs, known.out_msgs = max(known.in_msgs, in_msgs), max(known.out_msgs, out_msgs)
            if closed and not known.closed:
                known.closed = True
                events.append(BrokerEvent(DISCONNECT, known.client, parse_time(entry.get("stop")) or now_s))
        for cid in [c for c in self.conns if c not in listed]:
            gone = self.conns.pop(cid)
            if not gone.closed:  # ended and already out of the closed ring: seen ending now
                events.append(BrokerEvent(DISCONNECT, gone.client, now_s))
        self.baseline = False
        # a connection ending is placed after its start and its counts (one listing holds all three)
        events.sort(key=lambda e: (e.time_s or now_s, e.kind == DISCONNECT))
        return events


def _count(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _address(value) -> Optional[str]:
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def fetch_connections(monitor_url: str, timeout: float = 5.0) -> Tuple[List[dict], int]:
    """All connections a node lists (open and closed), paged; and the node's clock (epoch s)."""
    base = monitor_url.rstrip("/") + "/connz?state=all&auth=1&limit=%d&offset=%d"
    found: List[dict] = []
    now_s = None
    for page in range(MAX_PAGES):
        with urllib.request.urlopen(base % (PAGE, page * PAGE), timeout=timeout) as resp:
            body = json.loads(resp.read(MAX_BODY))
        now_s = now_s or parse_time(body.get("now"))
        batch = body.get("connections") or []
        found.extend(batch)
        if len(batch) < PAGE or len(found) >= _count(body.get("total")):
            break
    else:
        log.warning(
            "NATS monitor %s lists more than %d connections; the rest are not read this poll",
            monitor_url,
            PAGE * MAX_PAGES,
        )
    return found, now_s or int(datetime.now(timezone.utc).timestamp())


class ConnzPoller:
    """Polls every node's monitoring endpoint on its own thread and hands each event to `sink`."""

    def __init__(self, monitor_urls: List[str], sink: Callable[[BrokerEvent], None], poll_s: float = 2.0):
        self.urls = list(monitor_urls)
        self.sink = sink
        self.poll_s = poll_s
        self.trackers = {url: NodeTracker() for url in self.urls}
        self._failing: Set[str] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.polls = 0

    def start(self) -> "ConnzPoller":
        self._thread = threading.Thread(target=self._run, name="nats-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def poll(self) -> int:
        """One listing of every node; returns the number of events handed on. A node that cannot
        be reached keeps its state (its connections are not declared ended) until it answers."""
        handed = 0
        for url in self.urls:
            try:
                connections, now_s = fetch_connections(url)
            except (OSError, ValueError) as exc:
                if url not in self._failing:
                    log.warning("NATS monitor %s unreachable (%s); its connections' metrics wait for it", url, exc)
                    self._failing.add(url)
                continue
            if url in self._failing:
                log.info("NATS monitor %s answers again", url)
                self._failing.discard(url)
            for event in self.trackers[url].update(connections, now_s):
                self.sink(event)
                handed += 1
        self.polls += 1
        return handed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                log.exception("polling NATS's monitoring endpoints failed; retrying")
            self._stop.wait(self.poll_s)
