"""The front door on NATS JetStream: the scale-out deployment's ingest (docs/scale-out.md).

Devices speak MQTT to nats-server's MQTT listener, unchanged. The server's subject mapping
puts `$aws/things/{thing}/defender/metrics/{fmt}` (NATS subject `$aws.things.{thing}.defender.
metrics.{fmt}`) on `reports.{partition}.{thing}.{fmt}`, the partition being FNV-1a of the thing
name mod P (`partition_of`), and a replicated work-queue stream keeps them. Each partition has
one durable pull consumer; `NatsIngest` consumes the partitions this worker owns (the leases,
garrison.detect.ingest.leases) and runs the same `Ingestor` as the MQTT path:

- a fetched batch is handed to `Ingestor.handle_batch` when it has one (group commit), else to
  `handle` message by message, on one thread (the store's connection is one);
- replies go back through NATS to `$aws.things.{thing}.defender.metrics.{fmt}.accepted|rejected`,
  which the server delivers to the device's MQTT subscription;
- a message is acknowledged only after its outcome is durable, as on the MQTT path; a message
  that was not durably handled (a `Retry` outcome) is kept and handled again, in order, before
  anything newer, with `in_progress()` holding its redelivery back; one that keeps failing is
  set aside on `garrison.deadletter.{partition}` (a stream of its own), answered InternalError
  and acknowledged; that stream is bounded like the dead-letter directory (`DeadLetterCaps`):
  when full, a new dead letter is refused by the server, and the report is still answered and
  acknowledged (logged once a minute, counted), so a device whose reports keep failing can
  neither fill NATS's storage nor be redelivered forever;
- order across a takeover: a worker that takes a partition over waits until what the previous
  owner had fetched but not acknowledged is due for redelivery (ACK_WAIT_S) before fetching, so
  those reports come back before anything newer of the same things (JetStream redelivers
  first); a report the previous owner had stored comes back as a duplicate, which the engine
  does not apply again and answers ACCEPTED, as AWS does for a resend.
"""

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from garrison.detect.ingest.deadletter import MAX_BYTES, MAX_FILES, DeadLetterCounts
from garrison.detect.ingest.frontdoor import Ingestor, Reply, _RateLimitedLog
from garrison.wire import topics
from garrison.wire.limits import MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = logging.getLogger("garrison.ingest")

STREAM = "GARRISON_REPORTS"
DEADLETTER_STREAM = "GARRISON_DEADLETTER"
DEADLETTER_SUBJECT = "garrison.deadletter"
SUBJECTS = "reports.>"
ACK_WAIT_S = 5.0
FETCH_EXPIRES_S = 1.0
MAX_ATTEMPTS = 3
MAX_AGE_S = 7 * 86400  # the agent spools a week of reports; the stream keeps no longer
DEADLETTER_MAX_AGE_S = 30 * 86400
# a dead letter is its payload (kept up to the wire limit) and its headers (subject, reason, size:
# under 1 KB); JetStream counts both against max_msg_size
DEADLETTER_HEADER_ROOM = 2048
DEADLETTER_MAX_MSG_SIZE = MAX_PAYLOAD_BYTES + DEADLETTER_HEADER_ROOM
# JetStream's refusals of a publish that no retry can fix: the stream is full with discard new
# (10077 "maximum messages exceeded" / "maximum bytes exceeded"), the message is too large (10054)
_STORE_FAILED, _TOO_LARGE = 10077, 10054
_DESCRIPTION = "Garrison Device Defender reports in {} partitions (reports.PARTITION.THING.FORMAT)"
_PARTITIONS_IN_DESCRIPTION = re.compile(r"in (\d+) partitions")
# a topic level that cannot be a NATS subject token
_NATS_UNSAFE = re.compile(r"[\s.*>]")


class NatsSetupError(ValueError):
    """The stream or its consumers cannot be set up as asked (one line for the operator)."""


def partition_of(thing: str, partitions: int) -> int:
    """The partition nats-server's `partition(P, 1)` mapping gives `thing` (FNV-1a 32 mod P)."""
    h = 0x811C9DC5
    for byte in thing.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % partitions


def consumer_name(partition: int) -> str:
    return f"garrison-p{partition}"


def report_topic(subject: str) -> Optional[str]:
    """The device's MQTT topic of a `reports.{p}.{thing}.{fmt}` subject, else None."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "reports":
        return None
    try:
        return topics.report_topic(parts[2], parts[3])
    except ValueError:  # not json or cbor: no report topic (the front door drops it, logged)
        return None


def nats_subject(topic: str) -> Optional[str]:
    """An MQTT topic as nats-server's MQTT bridge sees it (`/` -> `.`), or None if a level cannot
    be a subject token (a device cannot subscribe to such a topic through NATS either)."""
    levels = topic.split("/")
    if any(not level or _NATS_UNSAFE.search(level) for level in levels):
        return None
    return ".".join(levels)


class DeadLetterCaps(DeadLetterCounts):
    """The dead-letter stream's bounds, `[dead_letters] max_files / max_bytes` as for the MQTT
    path's directory (1,000 messages, 64 MiB by default), and what became of the dead letters
    since the start: `kept`, and `dropped` because the stream was full (GET /metrics reads both).

    The stream discards new messages when full, not old ones: the first failures are the
    evidence (what tripped the bug, when it started), and a device flooding the stream must not
    push them out. They age out after 30 days, or the operator deletes them (`nats stream rmm`,
    `nats stream purge`), which makes room. A cap of 0 keeps none (JetStream reads a limit of 0
    as none at all, so the stream itself is given 1 and nothing is published to it).
    """

    def __init__(self, max_msgs: int = MAX_FILES, max_bytes: int = MAX_BYTES):
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        super().__init__()

    @property
    def keep_none(self) -> bool:
        return self.max_msgs <= 0 or self.max_bytes <= 0

    def limits(self) -> Dict[str, Any]:
        """The stream's configuration fields these caps set."""
        from nats.js.api import DiscardPolicy

        max_bytes = max(self.max_bytes, 1)
        return {
            "max_msgs": max(self.max_msgs, 1),
            "max_bytes": max_bytes,
            "max_msg_size": min(DEADLETTER_MAX_MSG_SIZE, max_bytes),
            "discard": DiscardPolicy.NEW,
        }

    def refused(self, subject: str, attempts: int, reason: str, why: str) -> None:
        """A dead letter not kept: counted, and logged at most once a minute with the count."""
        if not self._drop():
            return
        log.error(
            "dead-letter stream %s is full (at most %d messages, %d bytes: %s): a report on %s that "
            "failed %d times (%s) is answered and acknowledged but not kept; %d not kept since the "
            "engine started. Read and delete old ones (nats stream view / rmm %s) to make room",
            DEADLETTER_STREAM,
            self.max_msgs,
            self.max_bytes,
            why,
            subject[:160],
            attempts,
            reason[:200],
            self.dropped,
            DEADLETTER_STREAM,
        )


async def ensure_stream(
    js,
    partitions: Optional[int],
    replicas: int = 3,
    batch_size: int = 100,
    repartition: bool = False,
    dead_letters: Optional[DeadLetterCaps] = None,
) -> int:
    """Create the report stream, its per-partition consumers and the dead-letter stream if they
    are missing (idempotent; every worker may call it). Returns the partition count. With
    `repartition`, an existing stream is moved to `partitions`: consumers are added, and removed
    only when nothing is waiting in them (drain first: docs/scale-out.md). The dead-letter
    stream's limits are set to `dead_letters` (default caps), an existing stream updated in place."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        info = None
    if info is None:
        if not partitions:
            raise NatsSetupError(
                f"no stream {STREAM} yet: give the partition count (--partition-count, or run "
                "`garrison-detect nats-setup --partitions N`)"
            )
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                description=_DESCRIPTION.format(partitions),
                subjects=[SUBJECTS],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=replicas,
                max_age=MAX_AGE_S,
            )
        )
        log.info("created stream %s: %d partitions, %d replicas", STREAM, partitions, replicas)
        current = partitions
    else:
        found = _PARTITIONS_IN_DESCRIPTION.search(info.config.description or "")
        if not found:
            raise NatsSetupError(f"stream {STREAM} exists but was not made by garrison-detect (no partition count)")
        current = int(found.group(1))
        if partitions and partitions != current:
            if not repartition:
                raise NatsSetupError(
                    f"stream {STREAM} has {current} partitions, not {partitions} (to change it: "
                    "docs/scale-out.md, `garrison-detect nats-setup --partitions N`)"
                )
            await _repartition(js, info, current, partitions)
            current = partitions
    for p in range(current):
        try:
            await js.consumer_info(STREAM, consumer_name(p))
        except NotFoundError:
            await js.add_consumer(
                STREAM,
                ConsumerConfig(
                    durable_name=consumer_name(p),
                    filter_subject=f"reports.{p}.>",
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=ACK_WAIT_S,
                    max_ack_pending=batch_size,
                    max_deliver=-1,
                ),
            )
    await _ensure_deadletter_stream(js, dead_letters or DeadLetterCaps(), replicas)
    return current


async def _ensure_deadletter_stream(js, caps: DeadLetterCaps, replicas: int) -> None:
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    limits = caps.limits()
    try:
        info = await js.stream_info(DEADLETTER_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=DEADLETTER_STREAM,
                description="Garrison: reports the engine set aside after failing on them",
                subjects=[DEADLETTER_SUBJECT + ".>"],
                storage=StorageType.FILE,
                num_replicas=replicas,
                max_age=DEADLETTER_MAX_AGE_S,
                **limits,
            )
        )
        return
    was = {key: getattr(info.config, key) for key in limits}
    if all(_value(was[key]) == _value(value) for key, value in limits.items()):
        return
    # made by an older garrison-detect (no limits) or with other caps: JetStream updates limits
    # in place; a stream already over the new caps is trimmed by nats-server, oldest first
    for key, value in limits.items():
        setattr(info.config, key, value)
    updated = await js.update_stream(info.config)
    log.warning(
        "stream %s: limits updated to at most %d messages, %d bytes, %d bytes a message, new ones "
        "refused when full (were %s); it held %d messages, %d bytes, now %d, %d",
        DEADLETTER_STREAM,
        limits["max_msgs"],
        limits["max_bytes"],
        limits["max_msg_size"],
        ", ".join(f"{key} {_value(value)}" for key, value in was.items()),
        info.state.messages,
        info.state.bytes,
        updated.state.messages,
        updated.state.bytes,
    )


def _value(field: Any) -> Any:
    """A stream config field as the server reports it (an enum's value)."""
    return getattr(field, "value", field)


def _header_text(text: str, limit: int = 500) -> str:
    """`text` as a NATS header value: one line of printable ASCII, at most `limit` characters."""
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else " " for c in text)[:limit]


async def _repartition(js, info, current: int, partitions: int) -> None:
    for p in range(partitions, current):
        consumer = await js.consumer_info(STREAM, consumer_name(p))
        if consumer.num_pending or consumer.num_ack_pending:
            raise NatsSetupError(
                f"partition {p} still holds {consumer.num_pending + consumer.num_ack_pending} "
                "reports: stop the devices' traffic or let the workers drain it first"
            )
    for p in range(partitions, current):
        await js.delete_consumer(STREAM, consumer_name(p))
    info.config.description = _DESCRIPTION.format(partitions)
    await js.update_stream(info.config)
    log.info("stream %s: %d partitions (was %d)", STREAM, partitions, current)


def _now_ms() -> int:
    return int(time.time() * 1000)


class NatsIngest:
    """Run an Ingestor on the partitions of the report stream this worker owns.

    servers: nats:// URLs (any node of the cluster; the client fails over). `own(p)` / `disown(p)`
    start and stop consuming a partition (the leases call them; disown returns once the batch in
    hand is answered and acknowledged). `publish(topic, payload)` sends an alert through NATS.
    """

    def __init__(
        self,
        servers: Sequence[str],
        ingestor: Ingestor,
        now_ms: Callable[[], int] = _now_ms,
        batch_size: int = 100,
        name: str = "garrison-detect",
        max_attempts: int = MAX_ATTEMPTS,
        user_credentials: Optional[str] = None,
        dead_letters: Optional[DeadLetterCaps] = None,
    ):
        self.servers = list(servers)
        self.ingestor = ingestor
        self.now_ms = now_ms
        self.batch_size = batch_size
        self.name = name
        self.max_attempts = max_attempts
        self.user_credentials = user_credentials
        self.dead_letters = dead_letters or DeadLetterCaps()  # GET /metrics reads its counts
        self.connected = threading.Event()
        self.replies_sent = 0
        self.handled = 0
        self._owned: Dict[int, asyncio.Task] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._handler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="garrison-ingest")
        self._nc: Optional["Client"] = None  # set by start(), before any partition is consumed
        self._js: Optional["JetStreamContext"] = None
        self._log = _RateLimitedLog(every_s=30)
        self._stopping = threading.Event()

    # ---- lifecycle (called from other threads) --------------------------------------------------

    def start(self, timeout: float = 30.0) -> "NatsIngest":
        """Connect (raises if no server answers within `timeout`); the client reconnects by itself later."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="garrison-nats", daemon=True)
        self._thread.start()
        self._call(self._connect(), timeout + 5)
        return self

    def setup(self, partitions: Optional[int], replicas: int = 3, repartition: bool = False) -> int:
        """ensure_stream on this connection; returns the partition count."""
        return self._call(
            ensure_stream(self._js, partitions, replicas, self.batch_size, repartition, self.dead_letters), 60
        )

    def own(self, partition: int) -> None:
        self._call(self._own(partition), 30)

    def disown(self, partition: int) -> None:
        self._call(self._disown(partition), ACK_WAIT_S * 6)

    @property
    def partitions(self) -> List[int]:
        return sorted(self._owned)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """An alert to an MQTT topic, through NATS (no retain: NATS keeps no retained messages)."""
        subject = nats_subject(topic)
        if subject is None or self._loop is None or self._nc is None:
            return 1
        asyncio.run_coroutine_threadsafe(self._nc.publish(subject, payload), self._loop)
        return 0

    def stop(self, timeout: float = 30.0, disconnect: bool = True) -> None:
        """Stop consuming (finishing the batches in hand); then (unless told not to) disconnect."""
        self._stopping.set()
        for p in list(self._owned):
            try:
                self._call(self._disown(p), timeout)
            except Exception:
                log.exception("stopping partition %d", p)
        if disconnect:
            self.disconnect()

    def disconnect(self) -> None:
        if self._loop is None:
            return
        self._stopping.set()
        try:
            if self._nc is not None:
                self._call(self._nc.drain(), 10)
        except Exception as exc:
            log.warning("closing the NATS connection: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)
        self._handler.shutdown(wait=False)
        self.connected.clear()

    def _call(self, coro, timeout: float):
        if self._loop is None:
            coro.close()  # never awaited: no warning about it
            raise RuntimeError("NatsIngest.start() was not called")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- on the event loop ----------------------------------------------------------------------

    async def _connect(self) -> None:
        import nats

        async def disconnected():
            self.connected.clear()
            if not self._stopping.is_set():
                log.warning("lost the NATS server; reconnecting to another node")

        async def reconnected():
            self.connected.set()
            log.info("reconnected to NATS at %s", self._nc.connected_url.netloc if self._nc.connected_url else "?")

        async def error(exc):
            self._log(logging.WARNING, "nats-error", "NATS: %s", exc)

        options: Dict[str, Any] = dict(
            servers=self.servers,
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        if self.user_credentials:
            options["user_credentials"] = self.user_credentials
        nc = self._nc = await nats.connect(**options)
        self._js = nc.jetstream()
        self.connected.set()
        log.info("connected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

    async def _own(self, p: int) -> None:
        if p not in self._owned:
            self._owned[p] = asyncio.get_running_loop().create_task(self._consume(p), name=f"partition-{p}")

    async def _disown(self, p: int) -> None:
        task = self._owned.pop(p, None)
        if task is not None:
            await asyncio.wait([task])  # it sees p is no longer owned after the batch in hand

    async def _consume(self, p: int) -> None:
        import nats.errors

        nc, js = self._nc, self._js
        if nc is None or js is None:  # own() runs on the loop start() connected
            raise RuntimeError("NatsIngest.start() was not called")
        sub = None
        log.info("consuming partition %d", p)
        await self._after_previous_owner(js, p)
        while self._owned.get(p) is asyncio.current_task():
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind(durable=consumer_name(p), stream=STREAM)
                msgs = await sub.fetch(self.batch_size, timeout=FETCH_EXPIRES_S)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except Exception as exc:  # a node went away, the consumer's leader moved: try again
                self._log(logging.WARNING, f"fetch-{p}", "partition %d: fetching failed (%s); retrying", p, exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self._handle(nc, js, p, msgs)
            except Exception:  # the loop must outlive any one batch; unacknowledged, it comes back
                log.exception("partition %d: a batch of %d reports failed", p, len(msgs))
                await asyncio.sleep(0.5)
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        log.info("stopped consuming partition %d", p)

    async def _after_previous_owner(self, js: "JetStreamContext", p: int) -> None:
        """Wait until reports the partition's previous owner fetched but did not acknowledge are
        redelivered first (see the module docstring)."""
        await asyncio.sleep(FETCH_EXPIRES_S)  # a dead owner's last pull request expires
        try:
            pending = (await js.consumer_info(STREAM, consumer_name(p))).num_ack_pending
        except Exception as exc:
            log.warning("partition %d: cannot read the consumer (%s); waiting for redeliveries anyway", p, exc)
            pending = 1
        if pending:
            log.info(
                "partition %d: %d reports of its previous owner were not acknowledged; they come back first, in %gs",
                p,
                pending,
                ACK_WAIT_S,
            )
            await asyncio.sleep(ACK_WAIT_S)

    async def _handle(self, nc: "Client", js: "JetStreamContext", p: int, msgs: list) -> None:
        loop = asyncio.get_running_loop()
        attempts = [0] * len(msgs)
        waiting = list(range(len(msgs)))
        delay = 0.05
        while waiting:
            now = self.now_ms()
            batch = [(report_topic(msgs[i].subject), msgs[i].data, now) for i in waiting]
            outcomes = await loop.run_in_executor(self._handler, self._outcomes, batch)
            done, retry = [], []
            for i, outcome in zip(waiting, outcomes):
                if outcome is None or isinstance(outcome, Reply):
                    done.append((i, outcome))
                    continue
                # a Retry: not durably handled; handled again before anything newer
                if not getattr(outcome, "transient", False):
                    attempts[i] += 1
                    if attempts[i] + msgs[i].metadata.num_delivered - 1 >= self.max_attempts:
                        await self._dead_letter(js, p, msgs[i], outcome)
                        done.append(
                            (
                                i,
                                self.ingestor.internal_error(
                                    outcome.thing,
                                    outcome.fmt,
                                    outcome.report_id,
                                    self.now_ms(),
                                    "The engine failed to handle this report repeatedly and set it aside for the operator",
                                ),
                            )
                            if hasattr(self.ingestor, "internal_error")
                            else (i, None)
                        )
                        continue
                retry.append(i)
            for _i, reply in done:
                if reply is not None:
                    await self._reply(nc, reply)
            await self._ack([msgs[i] for i, _ in done])
            waiting = retry
            if waiting:
                if self._owned.get(p) is not asyncio.current_task():
                    return  # handed over: unacknowledged, they go to the next owner in order
                for i in waiting:
                    await msgs[i].in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _outcomes(self, batch):
        """On the handler thread: the ingestor's outcome for each (topic, payload, now_ms)."""
        handle_batch = getattr(self.ingestor, "handle_batch", None)
        if handle_batch is not None:
            outcomes = handle_batch(batch)
        else:
            outcomes = [self.ingestor.handle(topic, payload, now) for topic, payload, now in batch]
        self.handled += len(batch)
        return outcomes

    async def _reply(self, nc: "Client", reply: Reply) -> None:
        subject = nats_subject(reply.topic)
        if subject is None:
            self._log(
                logging.WARNING, "reply-subject", "no reply to %r: the topic is not a NATS subject", reply.topic[:160]
            )
            return
        await nc.publish(subject, reply.payload)
        self.replies_sent += 1

    async def _ack(self, msgs: list) -> None:
        """Acknowledge after the outcome is durable (and answered); the last one waits for the
        server, so when this returns the whole batch is acknowledged (or will be redelivered)."""
        if not msgs:
            return
        try:
            for msg in msgs[:-1]:
                await msg.ack()
            await msgs[-1].ack_sync(timeout=5)
        except Exception as exc:  # redelivered later: the engine answers the duplicates ACCEPTED
            self._log(
                logging.WARNING,
                "ack",
                "acknowledging %d reports failed (%s); they will be redelivered "
                "and answered again without being applied twice",
                len(msgs),
                exc,
            )

    async def _dead_letter(self, js: "JetStreamContext", p: int, msg, outcome) -> None:
        """Set a report aside on the dead-letter stream; when the stream's caps refuse it, it is
        only logged and counted (the caller answers and acknowledges it either way). Raises when
        NATS did not answer: the report is then not acknowledged and comes back."""
        from nats.js.errors import APIError

        reason = _header_text(str(getattr(outcome, "reason", "failed")))
        if self.dead_letters.keep_none:
            self.dead_letters.refused(msg.subject, self.max_attempts, reason, "[dead_letters] keeps none")
            return
        headers = {"Garrison-Subject": msg.subject, "Garrison-Reason": reason, "Garrison-Size": str(len(msg.data))}
        try:
            await js.publish(f"{DEADLETTER_SUBJECT}.{p}", msg.data[:MAX_PAYLOAD_BYTES], headers=headers, timeout=5)
        except APIError as exc:
            full = exc.err_code == _STORE_FAILED and "maximum" in (exc.description or "")
            if not (full or exc.err_code == _TOO_LARGE):
                raise
            self.dead_letters.refused(msg.subject, self.max_attempts, reason, exc.description or str(exc))
            return
        self.dead_letters.kept += 1
        log.error(
            "partition %d: set aside a report on %s after %d failed attempts (%s): kept in stream %s",
            p,
            msg.subject,
            self.max_attempts,
            reason,
            DEADLETTER_STREAM,
        )
