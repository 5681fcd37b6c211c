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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Protocol, Sequence, Tuple, Union, overload

from garrison.detect.ingest.validate import Invalid, report_id_of, validate
from garrison.wire import cbor_guard, codec, names, replies
from garrison.wire.limits import MAX_PAYLOAD_BYTES

# The contract's reply codes, topics and name rule, re-exported for the engine's callers.
from garrison.wire.names import valid_thing_name  # noqa: F401
from garrison.wire.replies import (
    ERROR_CODES,  # noqa: F401  (re-exported: the front door's codes)
    INTERNAL_ERROR,
    INVALID_PAYLOAD,
    INVALID_THING_NAME,  # noqa: F401
    PAYLOAD_TOO_LARGE,
    REPORT_TOO_OLD,
    STALE_REPORT_ID,
    THROTTLED,
    UNREGISTERED_THING,
    Reply,
)
from garrison.wire.topics import ENGINE_SUBSCRIPTIONS as SUBSCRIPTIONS  # noqa: F401
from garrison.wire.topics import parse_report_topic as parse_topic
from garrison.wire.topics import reply_safe as _safe_reply_thing

log = logging.getLogger("garrison.ingest")

BACKLOG_MAX_AGE_MS = 7 * 86400 * 1000  # the agent's spool keeps reports at most this long
EPOCH_MS_FLOOR = 10**12  # ids from here up read as epoch ms (2001-09-09 on)
FIRST_SEEN_GRACE_MS = 300 * 1000  # a first report was made a little before it arrived


class Sink(Protocol):
    """What the ingestor needs from the engine (detect's engine implements it)."""

    def last_report(self, thing: str) -> Optional[Tuple[int, int]]:
        """(report id, received epoch ms) of the thing's last accepted report, or None."""

    def is_registered(self, thing: str) -> bool:
        """Whether the thing is known to the engine (checked only in strict mode)."""

    def accept(self, thing: str, report_long: Dict[str, Any], received_ms: int) -> Any:
        """Record the report id and process the report, atomically (what it returns is not used)."""

    # optional: first_seen(thing) -> epoch ms of its registration, or None (reports dated before
    # it are refused); batch() -> a context manager making the accepts inside one transaction;
    # prefetch(things) -> called first inside batch() with the things of the reports to come


# what a device is told when the engine failed on its report (it keeps it and resends)
RESEND_LATER = "The engine could not process the report; send it again later"

# a valid report, ready for Ingestor._admit: (thing, fmt, report, report_id, now_ms)
Prepared = Tuple[str, str, Dict[str, Any], int, int]


@dataclass(frozen=True)
class Retry:
    """No answer yet (handle_batch): the report was not durably handled, so it must not be
    acknowledged to the broker; handle it again later. `transient`: the store was busy (another
    process's write lock), nothing is wrong with the report; else handling it raised."""

    thing: str
    fmt: str
    report_id: Optional[int]
    reason: str
    transient: bool


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

    def __init__(
        self,
        sink: Sink,
        min_interval_s: float = 300,
        grace_s: Optional[float] = None,
        max_payload: int = MAX_PAYLOAD_BYTES,
        strict: bool = False,
    ):
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
        parsed = self._parse(topic)
        if parsed is None:
            return None
        thing, fmt = parsed
        try:
            prepared = self._prepare(thing, fmt, payload, now_ms)
            if isinstance(prepared, Reply):
                return prepared
            with self._lock:
                return self._admit(*prepared)
        except Exception:  # never let one message stop the ingestor
            log.exception("internal error on a report from %s", thing)
            return self.internal_error(thing, fmt, None, now_ms)

    def handle_batch(self, messages: Sequence[Tuple[Any, Any, int]]) -> List[Union[Reply, Retry, None]]:
        """Handle (topic, payload, now_ms) messages together: what needs no store is answered
        first (topic, name, size, decoding, validation), then the rest are admitted in one
        store transaction when the sink has `batch()` (group commit). Returns one outcome per
        message: a Reply (final: publish it, acknowledge the message), None (no reply possible:
        acknowledge), or Retry (not durably handled: do not acknowledge; handle it again).
        Replies of a batch are only final once this returns, i.e. after the commit."""
        outcomes: List[Union[Reply, Retry, None]] = [None] * len(messages)
        admit: List[Tuple[int, Prepared]] = []
        for i, (topic, payload, now_ms) in enumerate(messages):
            now_ms = int(now_ms)
            parsed = self._parse(topic)
            if parsed is None:
                continue
            try:
                prepared = self._prepare(parsed[0], parsed[1], payload, now_ms)
            except Exception:
                log.exception("internal error on a report from %s", parsed[0])
                prepared = self.internal_error(parsed[0], parsed[1], None, now_ms)
            if isinstance(prepared, Reply):
                outcomes[i] = prepared
            else:
                admit.append((i, prepared))
        if not admit:
            return outcomes
        batch = getattr(self.sink, "batch", None)
        try:
            with batch() if batch is not None else nullcontext(), self._lock:
                prefetch = getattr(self.sink, "prefetch", None)
                if batch is not None and prefetch is not None:  # the batch's things read at once
                    prefetch([prepared[0] for _, prepared in admit])
                for i, prepared in admit:
                    outcomes[i] = self._admit(*prepared, in_batch=True)
        except Exception as exc:  # the transaction did not commit: nothing of the batch is durable
            transient = bool(getattr(exc, "transient", False))
            if transient:
                self._log(
                    logging.WARNING,
                    "busy",
                    "the store is busy (%s); %d reports wait and will be handled again",
                    exc,
                    len(admit),
                )
            else:
                log.exception("a batch of %d reports failed to commit", len(admit))
            for i, (thing, fmt, _, report_id, _) in admit:
                outcomes[i] = Retry(thing, fmt, report_id, str(exc), transient)
        return outcomes

    def _parse(self, topic: Any) -> Optional[Tuple[str, str]]:
        """(thing, format) of a topic we can answer on; None (logged, counted) otherwise."""
        parsed = parse_topic(topic)
        if parsed is None:
            self.stats["dropped"] += 1
            self._log(
                logging.WARNING, "topic", "dropped a message on %r: not a Device Defender report topic", _shorten(topic)
            )
            return None
        if not _safe_reply_thing(parsed[0]):
            self.stats["dropped"] += 1
            self._log(
                logging.WARNING,
                "thing",
                "dropped a report from thing %r: the name cannot be used in a reply topic",
                _shorten(parsed[0]),
            )
            return None
        return parsed

    def internal_error(
        self, thing: str, fmt: str, report_id: Optional[int], now_ms: int, message: str = RESEND_LATER
    ) -> Reply:
        """An InternalError reply: by default, that the report may be sent again later; also for a
        message set aside after failing again and again (with its own message)."""
        return self._rejected(thing, fmt, report_id, now_ms, INTERNAL_ERROR, message)

    def _prepare(self, thing: str, fmt: str, payload: bytes, now_ms: int) -> Union[Reply, Prepared]:
        """The checks that need no store, cheapest first: a final Reply, or the arguments of
        `_admit` for a valid report."""
        if not valid_thing_name(thing):
            return self._rejected(
                thing, fmt, None, now_ms, INVALID_THING_NAME, names.THING.text[0].upper() + names.THING.text[1:]
            )
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            return self._rejected(thing, fmt, None, now_ms, INVALID_PAYLOAD, "Payload is not bytes")
        if len(payload) > self.max_payload:
            return self._rejected(
                thing,
                fmt,
                None,
                now_ms,
                PAYLOAD_TOO_LARGE,
                f"Payload is {len(payload)} bytes, over the limit of {self.max_payload}",
            )
        if self.strict and not self.sink.is_registered(thing):  # before decoding: strangers cost little
            return self._rejected(
                thing, fmt, None, now_ms, UNREGISTERED_THING, "Thing is not registered with the detect engine"
            )
        try:
            if fmt == "cbor":  # before the decoder: tags and shared references never get built
                cbor_guard.check(payload)
            doc = codec.decode(bytes(payload), fmt)
        except cbor_guard.CborRefused as exc:
            return self._rejected(thing, fmt, None, now_ms, INVALID_PAYLOAD, f"malformed CBOR: {exc}")
        except codec.CodecError as exc:
            return self._rejected(thing, fmt, None, now_ms, INVALID_PAYLOAD, str(exc))
        report_id = report_id_of(doc)
        try:
            report = validate(doc)
        except Invalid as exc:
            return self._rejected(thing, fmt, report_id, now_ms, exc.code, exc.message)
        return thing, fmt, report, report["header"]["report_id"], now_ms

    # out of a batch a failing sink is answered (InternalError), never Retry
    @overload
    def _admit(
        self, thing: str, fmt: str, report: Dict[str, Any], report_id: int, now_ms: int, in_batch: Literal[False] = ...
    ) -> Reply: ...

    @overload
    def _admit(
        self, thing: str, fmt: str, report: Dict[str, Any], report_id: int, now_ms: int, in_batch: bool
    ) -> Union[Reply, Retry]: ...

    def _admit(
        self, thing: str, fmt: str, report: Dict[str, Any], report_id: int, now_ms: int, in_batch: bool = False
    ) -> Union[Reply, Retry]:
        """Registration, duplicates, order and rate; then the sink. In a batch a failing sink
        gives Retry (a busy store aborts the whole batch) instead of an InternalError reply."""
        try:
            last = self.sink.last_report(thing)
        except Exception as exc:
            if in_batch:
                return self._failed(exc, thing, fmt, report_id, "look up")
            log.exception("the engine failed to look up %s", thing)
            return self.internal_error(thing, fmt, report_id, now_ms)
        if last is not None:
            last_id, last_ms = last
            if report_id == last_id:  # QoS 1 redelivery or a resend: already counted
                self.stats["duplicate"] += 1
                return self._accepted(thing, fmt, report_id, now_ms)
            if report_id < last_id:
                return self._rejected(
                    thing,
                    fmt,
                    report_id,
                    now_ms,
                    STALE_REPORT_ID,
                    f"Report id is lower than the last accepted one ({last_id})",
                )
        at_ms = self.datapoint_time(report_id, now_ms)
        too_old = self._too_old(thing, report_id, at_ms, now_ms, last is None)
        if too_old:
            return self._rejected(thing, fmt, report_id, now_ms, REPORT_TOO_OLD, too_old)
        if last is not None:
            wait_ms = (self.min_interval_s - self.grace_s) * 1000
            since_ms = at_ms - last_ms
            # a live report older than the last one means the engine's clock stepped back: let it in
            if since_ms < wait_ms and (since_ms >= 0 or at_ms != now_ms):
                return self._rejected(
                    thing,
                    fmt,
                    report_id,
                    now_ms,
                    THROTTLED,
                    f"Reports are limited to one per {self.min_interval_s:g} s per thing",
                )
        try:
            self.sink.accept(thing, report, at_ms)
        except Exception as exc:
            if in_batch:
                return self._failed(exc, thing, fmt, report_id, "accept")
            log.exception("the engine failed to accept report %s from %s", report_id, thing)
            return self.internal_error(thing, fmt, report_id, now_ms)
        return self._accepted(thing, fmt, report_id, now_ms)

    def _failed(self, exc: Exception, thing: str, fmt: str, report_id: int, what: str) -> Retry:
        if getattr(exc, "transient", False):
            raise exc  # a busy store: the batch as a whole waits
        log.exception("the engine failed to %s report %s from %s", what, report_id, thing)
        return Retry(thing, fmt, report_id, f"{type(exc).__name__}: {exc}", False)

    def _too_old(self, thing: str, report_id: int, at_ms: int, now_ms: int, new: bool) -> Optional[str]:
        """Why a report is dated too far back to be believed, or None. A device must not fabricate
        history (issue 10): backdated ids would be accepted as a spooled backlog, unthrottled,
        and would train ML models on days that never happened."""
        if EPOCH_MS_FLOOR <= report_id < now_ms - BACKLOG_MAX_AGE_MS:
            return (
                f"Report id dates the report more than {BACKLOG_MAX_AGE_MS // 86_400_000} days before "
                "its arrival (older than any agent spools)"
            )
        first_seen = now_ms if new else getattr(self.sink, "first_seen", lambda _: None)(thing)
        if first_seen is not None and at_ms < first_seen - FIRST_SEEN_GRACE_MS:
            return "Report id dates the report before the thing was first seen"
        return None

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
        self._log(
            logging.INFO, f"rejected:{code}", "rejected a report from %s: %s: %s", thing, code, reply.error_message
        )
        return reply


def _shorten(text: Any, limit: int = 160) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
