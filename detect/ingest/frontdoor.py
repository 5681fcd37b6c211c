"""The detect engine's front door: MQTT in, decode, validate, throttle, reply.

`Ingestor.handle(topic, payload, now_ms)` is the whole protocol, free of MQTT: it parses the
topic, decodes JSON or CBOR, validates (garrison.detect.ingest.validate), applies AWS's limits (payload size,
one report per thing per interval) and hands accepted reports to a `Sink` (the engine). It
returns the reply to publish, encoded like the request, or None when no reply is possible.
`garrison.detect.ingest.mqtt.MqttIngest` connects it to a broker. Error codes are documented in
docs/wire-format.md.
"""
import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

from garrison.detect.ingest.validate import Invalid, report_id_of, validate
from garrison.wire import codec, names, replies
from garrison.wire.limits import MAX_PAYLOAD_BYTES
# The contract's reply codes, topics and name rule, re-exported for the engine's callers.
from garrison.wire.names import valid_thing_name  # noqa: F401
from garrison.wire.replies import (ERROR_CODES, INTERNAL_ERROR, INVALID_PAYLOAD, INVALID_THING_NAME,  # noqa: F401
                                   PAYLOAD_TOO_LARGE, STALE_REPORT_ID, THROTTLED, UNREGISTERED_THING, Reply)
from garrison.wire.topics import ENGINE_SUBSCRIPTIONS as SUBSCRIPTIONS  # noqa: F401
from garrison.wire.topics import parse_report_topic as parse_topic
from garrison.wire.topics import reply_safe as _safe_reply_thing

log = logging.getLogger("garrison.ingest")

BACKLOG_MAX_AGE_MS = 7 * 86400 * 1000    # an id older than this is no time: dated by its arrival


class Sink(Protocol):
    """What the ingestor needs from the engine (detect's engine implements it)."""

    def last_report(self, thing: str) -> Optional[Tuple[int, int]]:
        """(report id, received epoch ms) of the thing's last accepted report, or None."""

    def is_registered(self, thing: str) -> bool:
        """Whether the thing is known to the engine (checked only in strict mode)."""

    def accept(self, thing: str, report_long: Dict[str, Any], received_ms: int) -> None:
        """Record the report id and process the report, atomically."""


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
                 max_payload: int = MAX_PAYLOAD_BYTES, strict: bool = False):
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
                                  names.THING.text[0].upper() + names.THING.text[1:])
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return self._rejected(thing, fmt, None, now_ms, INVALID_PAYLOAD, "Payload is not bytes")
        if len(payload) > self.max_payload:
            return self._rejected(thing, fmt, None, now_ms, PAYLOAD_TOO_LARGE,
                                  f"Payload is {len(payload)} bytes, over the limit of {self.max_payload}")
        try:
            doc = codec.decode(bytes(payload), fmt)
        except codec.CodecError as exc:
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
        return replies.accepted(thing, fmt, report_id, now_ms)

    def _rejected(self, thing, fmt, report_id, now_ms, code, message) -> Reply:
        self.stats[f"rejected:{code}"] += 1
        reply = replies.rejected(thing, fmt, report_id, code, message, now_ms)
        self._log(logging.INFO, f"rejected:{code}", "rejected a report from %s: %s: %s",
                  thing, code, reply.error_message)
        return reply


def _shorten(text: Any, limit: int = 160) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."
