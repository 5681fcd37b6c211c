"""The detect engine's front door: MQTT in, decode, validate, throttle, reply.

`Ingestor.handle(topic, payload, now_ms)` is the whole protocol, free of MQTT: it parses the
topic, decodes JSON or CBOR, validates (detect.validate), applies AWS's limits (payload size,
one report per thing per interval) and hands accepted reports to a `Sink` (the engine). It
returns the reply to publish, encoded like the request, or None when no reply is possible.
`MqttIngest` connects it to a broker. Error codes are documented in docs/wire-format.md.
"""
import json
import logging
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import cbor2

from agent import report as wire
from agent.transports.paho_compat import new_client, parse_broker_url
from detect.validate import INVALID_PAYLOAD, Invalid, report_id_of, validate

log = logging.getLogger("garrison.ingest")

# Reply codes. AWS's own first; the rest are Garrison extensions (docs/wire-format.md).
BACKLOG_MAX_AGE_MS = 7 * 86400 * 1000    # an id older than this is no time: dated by its arrival
THROTTLED = "Throttled"                  # AWS: a second report within the interval
PAYLOAD_TOO_LARGE = "PayloadTooLarge"    # over max_payload (AWS IoT drops these at the broker)
STALE_REPORT_ID = "StaleReportId"        # a report id lower than the last accepted one
INVALID_THING_NAME = "InvalidThingName"  # not 1-128 bytes of [a-zA-Z0-9:_-]
UNREGISTERED_THING = "UnregisteredThing" # strict mode: thing not registered with the engine
INTERNAL_ERROR = "InternalError"         # the engine failed to store the report; resend later

ERROR_CODES = (INVALID_PAYLOAD, THROTTLED, PAYLOAD_TOO_LARGE, STALE_REPORT_ID, INVALID_THING_NAME,
               UNREGISTERED_THING, INTERNAL_ERROR)

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]+")
MAX_THING_NAME_BYTES = 128
# A reply topic is only safe to publish if the broker will take it: no wildcards or NUL (MQTT),
# no control characters (Mosquitto disconnects clients that publish them), bounded length.
_UNSAFE_TOPIC_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f+#/\ud800-\udfff]")
_MAX_REPLY_THING_BYTES = 1024
_MAX_MESSAGE_CHARS = 200
SUBSCRIPTIONS = ("$aws/things/+/defender/metrics/json", "$aws/things/+/defender/metrics/cbor")


class Sink(Protocol):
    """What the ingestor needs from the engine (detect's engine implements it)."""

    def last_report(self, thing: str) -> Optional[Tuple[int, int]]:
        """(report id, received epoch ms) of the thing's last accepted report, or None."""

    def is_registered(self, thing: str) -> bool:
        """Whether the thing is known to the engine (checked only in strict mode)."""

    def accept(self, thing: str, report_long: Dict[str, Any], received_ms: int) -> None:
        """Record the report id and process the report, atomically."""


class MemoryLedger:
    """A Sink in memory: what tests and benchmarks use in place of the engine."""

    def __init__(self, registered=None):
        self.registered = set(registered or ())
        self.last: Dict[str, Tuple[int, int]] = {}
        self.reports: Dict[str, list] = {}
        self._lock = threading.Lock()

    def last_report(self, thing):
        with self._lock:
            return self.last.get(thing)

    def is_registered(self, thing):
        return thing in self.registered

    def accept(self, thing, report_long, received_ms):
        with self._lock:
            self.last[thing] = (report_long["header"]["report_id"], received_ms)
            self.reports.setdefault(thing, []).append(report_long)


@dataclass(frozen=True)
class Reply:
    """A reply to publish: `payload` is encoded like the request (CBOR on cbor topics)."""

    topic: str
    payload: bytes
    accepted: bool
    thing: str
    report_id: Optional[int]
    error_code: Optional[str] = None
    error_message: Optional[str] = None


def parse_topic(topic: Any) -> Optional[Tuple[str, str]]:
    """(thing, format) of `$aws/things/{thing}/defender/metrics/{json|cbor}`, else None."""
    if not isinstance(topic, str):
        return None
    parts = topic.split("/")
    if (len(parts) != 6 or parts[:2] != ["$aws", "things"] or parts[3:5] != ["defender", "metrics"]
            or parts[5] not in wire.FORMATS or not parts[2]):
        return None
    return parts[2], parts[5]


def valid_thing_name(thing: str) -> bool:
    """AWS's rule: 1-128 bytes of [a-zA-Z0-9:_-]."""
    return len(thing) <= MAX_THING_NAME_BYTES and bool(_THING_NAME.fullmatch(thing))


def _safe_reply_thing(thing: str) -> bool:
    return (not _UNSAFE_TOPIC_CHARS.search(thing)
            and len(thing.encode("utf-8", "surrogatepass")) <= _MAX_REPLY_THING_BYTES)


def encode_reply(body: Dict[str, Any], fmt: str) -> bytes:
    if fmt == "cbor":
        return cbor2.dumps(body)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


class _RateLimitedLog:
    """At most one log line per key per `every_s`, with a count of what was held back."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._last: Dict[str, float] = {}
        self._held: Counter = Counter()

    def __call__(self, level: int, key: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            self._held[key] += 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            message += " (and %d more like it since the last line)"
            args = args + (held,)
        log.log(level, message, *args)


class Ingestor:
    """Decode, validate, throttle and reply; hands accepted reports to `sink`.

    min_interval_s: one report per thing per interval (AWS: 300 s); a new report earlier than
    min_interval_s - grace_s after the last accepted one is Throttled. grace_s defaults to a
    tenth of the interval (devices' clocks and schedules jitter). strict: refuse things the
    sink does not know. Thread-safe; one lock serializes the per-thing bookkeeping.
    """

    def __init__(self, sink: Sink, min_interval_s: float = 300, grace_s: Optional[float] = None,
                 max_payload: int = wire.MAX_PAYLOAD_BYTES, strict: bool = False):
        if min_interval_s < 0:
            raise ValueError("min_interval_s must not be negative")
        self.sink = sink
        self.min_interval_s = min_interval_s
        self.grace_s = min_interval_s / 10 if grace_s is None else grace_s
        self.max_payload = max_payload
        self.strict = strict
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._log = _RateLimitedLog()

    def handle(self, topic: str, payload: bytes, now_ms: Optional[int] = None) -> Optional[Reply]:
        """The reply to one message, or None when the message gets no reply (logged)."""
        now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
        parsed = parse_topic(topic)
        if parsed is None:
            self.stats["dropped"] += 1
            self._log(logging.WARNING, "topic", "dropped a message on %r: not a Device Defender "
                      "report topic", _shorten(topic))
            return None
        thing, fmt = parsed
        if not _safe_reply_thing(thing):
            self.stats["dropped"] += 1
            self._log(logging.WARNING, "thing", "dropped a report from thing %r: the name cannot "
                      "be used in a reply topic", _shorten(thing))
            return None
        try:
            return self._handle(thing, fmt, payload, now_ms)
        except Exception:  # never let one message stop the ingestor
            log.exception("internal error on a report from %s", thing)
            return self._rejected(thing, fmt, None, now_ms, INTERNAL_ERROR,
                                  "The engine could not process the report; send it again later")

    def _handle(self, thing: str, fmt: str, payload: bytes, now_ms: int) -> Reply:
        if not valid_thing_name(thing):
            return self._rejected(thing, fmt, None, now_ms, INVALID_THING_NAME,
                                  "Thing names are 1-128 bytes of [a-zA-Z0-9:_-]")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return self._rejected(thing, fmt, None, now_ms, INVALID_PAYLOAD, "Payload is not bytes")
        if len(payload) > self.max_payload:
            return self._rejected(thing, fmt, None, now_ms, PAYLOAD_TOO_LARGE,
                                  f"Payload is {len(payload)} bytes, over the limit of {self.max_payload}")
        try:
            doc = wire.decode(bytes(payload), fmt)
        except wire.ReportError as exc:
            return self._rejected(thing, fmt, None, now_ms, INVALID_PAYLOAD, str(exc))
        report_id = report_id_of(doc)
        try:
            report = validate(doc)
        except Invalid as exc:
            return self._rejected(thing, fmt, report_id, now_ms, exc.code, exc.message)
        report_id = report["header"]["report_id"]
        with self._lock:
            return self._admit(thing, fmt, report, report_id, now_ms)

    def _admit(self, thing: str, fmt: str, report: Dict[str, Any], report_id: int, now_ms: int) -> Reply:
        """Registration, duplicates, order and rate; then the sink."""
        try:
            if self.strict and not self.sink.is_registered(thing):
                return self._rejected(thing, fmt, report_id, now_ms, UNREGISTERED_THING,
                                      "Thing is not registered with the detect engine")
            last = self.sink.last_report(thing)
        except Exception:
            log.exception("the engine failed to look up %s", thing)
            return self._rejected(thing, fmt, report_id, now_ms, INTERNAL_ERROR,
                                  "The engine could not process the report; send it again later")
        if last is not None:
            last_id, last_ms = last
            if report_id == last_id:  # QoS 1 redelivery or a resend: already counted
                self.stats["duplicate"] += 1
                return self._accepted(thing, fmt, report_id, now_ms)
            if report_id < last_id:
                return self._rejected(thing, fmt, report_id, now_ms, STALE_REPORT_ID,
                                      f"Report id is lower than the last accepted one ({last_id})")
        at_ms = self.datapoint_time(report_id, now_ms)
        if last is not None:
            wait_ms = (self.min_interval_s - self.grace_s) * 1000
            since_ms = at_ms - last_ms
            # a live report older than the last one means the engine's clock stepped back: let it in
            if since_ms < wait_ms and (since_ms >= 0 or at_ms != now_ms):
                return self._rejected(thing, fmt, report_id, now_ms, THROTTLED,
                                      f"Reports are limited to one per {self.min_interval_s:g} s per thing")
        try:
            self.sink.accept(thing, report, at_ms)
        except Exception:
            log.exception("the engine failed to accept report %s from %s", report_id, thing)
            return self._rejected(thing, fmt, report_id, now_ms, INTERNAL_ERROR,
                                  "The engine could not process the report; send it again later")
        return self._accepted(thing, fmt, report_id, now_ms)

    def datapoint_time(self, report_id: int, now_ms: int) -> int:
        """When the report was made: its id when that is an epoch-ms time in the past, else now.

        Agents send the reports they spooled while the broker was away in order when it comes
        back; their ids are epoch ms (ours, and what DESIGN.md recommends). Dated by their ids,
        such a backlog is evaluated at the times it describes and is not Throttled for arriving
        all at once. A device cannot use this to report faster: ids only increase and are never
        dated in the future, so its reports stay one per interval of elapsed time. Other ids
        (counters, seconds, a clock running ahead) are dated by their arrival.
        """
        if now_ms - BACKLOG_MAX_AGE_MS <= report_id <= now_ms:
            return report_id
        return now_ms

    def _accepted(self, thing, fmt, report_id, now_ms) -> Reply:
        self.stats["accepted"] += 1
        body = {"thingName": thing, "reportId": report_id, "status": "ACCEPTED", "timestamp": now_ms}
        return Reply(wire.topic(thing, fmt) + "/accepted", encode_reply(body, fmt), True, thing, report_id)

    def _rejected(self, thing, fmt, report_id, now_ms, code, message) -> Reply:
        self.stats[f"rejected:{code}"] += 1
        message = _shorten(message, _MAX_MESSAGE_CHARS)
        self._log(logging.INFO, f"rejected:{code}", "rejected a report from %s: %s: %s",
                  thing, code, message)
        body: Dict[str, Any] = {"thingName": thing}
        if report_id is not None:
            body["reportId"] = report_id
        body.update(status="REJECTED", statusDetails={"ErrorCode": code, "ErrorMessage": message},
                    timestamp=now_ms)
        return Reply(wire.topic(thing, fmt) + "/rejected", encode_reply(body, fmt), False, thing,
                     report_id, code, message)


def _shorten(text: Any, limit: int = 160) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------- MQTT

def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


class MqttIngest:
    """Run an Ingestor on an MQTT broker.

    A persistent session (clean_session=False, fixed client id) so the broker queues QoS 1
    reports while the engine is down. Messages pass from paho's network thread to one worker
    through a bounded queue; when it is full the network thread waits (TCP backpressure), so
    memory never grows without bound. Where paho supports it (2.x) a report is acknowledged
    only after it was handled, so an engine crash loses nothing the broker still holds.
    now_ms: the clock that dates arrivals (epoch ms); `serve` passes the engine's, so
    `--clock-offset` shifts report times too.
    """

    def __init__(self, broker_url: str, ingestor: Ingestor, client_id: str = "garrison-detect",
                 tls: Optional[Tuple[str, str, str]] = None, username: Optional[str] = None,
                 password: Optional[str] = None, queue_size: int = 100,
                 reconnect_delay: Tuple[int, int] = (1, 60), keepalive: int = 60,
                 now_ms: Callable[[], int] = _wall_clock_ms):
        host, port, url_tls, url_user, url_password = parse_broker_url(broker_url)
        self.url, self.host, self.port = broker_url, host, port
        self.ingestor = ingestor
        self.now_ms = now_ms
        self.keepalive = keepalive
        self.connected = threading.Event()
        self.replies_sent = 0
        # bounded in messages; at 128 KB each the default holds at most ~13 MB
        self._queue: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self._log_behind = _RateLimitedLog(every_s=30)
        self._stopping = threading.Event()
        self._worker: Optional[threading.Thread] = None
        self._client = new_client(client_id, clean_session=False)
        self._manual_ack = hasattr(self._client, "manual_ack_set")
        if self._manual_ack:
            self._client.manual_ack_set(True)
        if tls or url_tls:
            ca, cert, key = tls if tls else (None, None, None)
            self._client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        if username or url_user:
            self._client.username_pw_set(username or url_user, password or url_password)
        self._client.reconnect_delay_set(*reconnect_delay)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # paho callbacks: signatures differ between paho 1.6 and 2.x, hence *rest.
    def _on_connect(self, client, userdata, flags, rc, *rest):
        if getattr(rc, "is_failure", rc != 0):
            log.error("broker %s refused the connection: %s", self.url, rc)
            return
        client.subscribe([(topic, 1) for topic in SUBSCRIPTIONS])
        log.info("connected to %s; listening for Device Defender reports", self.url)
        self.connected.set()

    def _on_disconnect(self, client, userdata, *rest):
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("lost the broker %s; reconnecting", self.url)

    def _on_message(self, client, userdata, msg):
        try:
            self._queue.put_nowait(msg)
            return
        except queue.Full:
            self._log_behind(logging.WARNING, "behind", "the engine is behind: %d reports queued; "
                             "holding the broker back until it catches up", self._queue.maxsize)
        while not self._stopping.is_set():
            try:
                self._queue.put(msg, timeout=0.5)  # waits while the worker is behind
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            try:
                msg = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._process(msg)
            except Exception:  # the worker must outlive any one message
                log.exception("failed to answer a message on %r", getattr(msg, "topic", "?"))

    def _process(self, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None  # not UTF-8: not a topic we can answer on; handle() drops it
        reply = self.ingestor.handle(topic, msg.payload, self.now_ms())
        if reply is not None:
            # QoS 0: a QoS 1 reply waits in paho's memory for a PUBACK that the network thread,
            # busy holding back a burst, reads late; replies then piled up by the thousand
            # (docs/bench-burst.md). The report itself is what must not be lost, and it is not.
            self._client.publish(reply.topic, reply.payload, qos=0)
            self.replies_sent += 1
        if self._manual_ack and msg.qos > 0:
            self._client.ack(msg.mid, msg.qos)

    def start(self) -> "MqttIngest":
        """Connect (retrying in the background until the broker answers) and start serving."""
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="garrison-ingest", daemon=True)
        self._worker.start()
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self._client.loop_start()
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        """Publish on the engine's connection (alerts): one session per engine identity, since a
        broker that ties client ids to certificates lets one connection take over the other."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, timeout: float = 10.0, disconnect: bool = True) -> None:
        """Finish what is queued and stop the worker; then (unless told not to) disconnect."""
        self._stopping.set()
        if self._worker:
            self._worker.join(timeout)
        if disconnect:
            self.disconnect()

    def disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def run_forever(self) -> None:
        """Serve until Ctrl-C / SIGTERM (as KeyboardInterrupt) or stop() from another thread."""
        self.start()
        try:
            while not self._stopping.wait(1.0):
                pass
        except KeyboardInterrupt:
            log.info("stopping")
        finally:
            self.stop()
