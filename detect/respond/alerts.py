"""Alert messages and where they go: the log, an MQTT topic, webhooks.

The message has the shape of Device Defender's SNS notification (times in ms):
  {"thingName", "securityProfileName", "behavior": {name, metric, criteria},
   "metricValue": {"count": 3} | {"ports": [...]} | ..., "violationId",
   "violationEventType": "in-alarm" | "alarm-cleared" | "alarm-invalidated", "violationEventTime"}
plus our extras when known (e.g. "threshold" for statistical behaviors).

Delivery never blocks the engine: each remote target owns a bounded queue and one worker thread;
when the queue is full the alert is dropped and the drop logged (and counted in `stats`).
Webhooks retry 5xx, 429 and connection errors with exponential backoff; each attempt has an
overall deadline (connect, send, headers: a server that answers one byte at a time is cut off
when it passes) and reads at most MAX_RESPONSE_BYTES of the answer.

Whoever hands an alert over may pass `done(outcome, detail)`: it is called once the alert was
delivered ("delivered"), given up after its last attempt ("failed"), or not taken ("dropped": a
full queue, a closed target). The engine (garrison.detect.engine) marks its outbox from these outcomes,
and hands a target no more than it has room for, so an alert is never marked sent that was not.
"""

import http.client
import io
import json
import logging
import queue
import socket
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from garrison.detect.respond.violations import EVENT_TYPES

log = logging.getLogger("garrison.alerts")

_MQTT_ERR_NO_CONN = 4  # paho's MQTT_ERR_NO_CONN (the same in paho 1.6 and 2.x)

DEFAULT_TOPIC = "garrison/alerts/{thing}"
DEFAULT_QUEUE_SIZE = 1000
MAX_BACKOFF_SECONDS = 60.0
MAX_RESPONSE_BYTES = 64 * 1024  # a webhook's status line, headers and the start of its body
DELIVERED, FAILED, DROPPED = "delivered", "failed", "dropped"
Done = Callable[[str, str], None]  # done(outcome, detail)


class AlertConfigError(ValueError):
    """A bad alert target configuration."""


def AlertMessage(
    thingName: str,
    securityProfileName: str,
    behavior: Any,
    metricValue: Optional[Dict[str, Any]],
    violationId: str,
    violationEventType: str,
    violationEventTime: int,
    **extras: Any,
) -> Dict[str, Any]:
    """An alert in the SNS-like shape. `behavior` may be a garrison.detect.judge.profiles.Behavior, its AWS
    dict, or a behavior name; extras (e.g. threshold=...) are added as they are."""
    if violationEventType not in EVENT_TYPES:
        raise ValueError(f"violationEventType must be one of {EVENT_TYPES}, got {violationEventType!r}")
    if hasattr(behavior, "to_dict"):
        behavior = behavior.to_dict()
    elif isinstance(behavior, str):
        behavior = {"name": behavior}
    message = {
        "thingName": thingName,
        "securityProfileName": securityProfileName,
        "behavior": behavior,
        "metricValue": metricValue,
        "violationId": violationId,
        "violationEventType": violationEventType,
        "violationEventTime": int(violationEventTime),
    }
    message.update({k: v for k, v in extras.items() if v is not None})
    return message


def _behavior_name(message: Mapping[str, Any]) -> str:
    behavior = message.get("behavior")
    return behavior.get("name", "") if isinstance(behavior, Mapping) else str(behavior or "")


class LogTarget:
    """Writes each alert as one JSON log line (WARNING for in-alarm, INFO otherwise)."""

    name = "log"

    def __init__(self, logger: Optional[logging.Logger] = None):
        self.logger = logger or log
        self.stats = {"delivered": 0, "dropped": 0, "failed": 0}

    def deliver(self, message: Mapping[str, Any], done: Optional[Done] = None) -> bool:
        level = logging.WARNING if message.get("violationEventType") == "in-alarm" else logging.INFO
        self.logger.log(level, "alert %s", json.dumps(message, sort_keys=True, default=str))
        self.stats["delivered"] += 1
        if done is not None:
            done(DELIVERED, "")
        return True

    def has_room(self) -> bool:
        return True

    def flush(self, timeout: float = 0) -> bool:
        return True

    def close(self, timeout: float = 0) -> None:
        pass


class QueuedTarget:
    """A target that sends from a bounded queue on its own thread; subclasses define `send`."""

    name = "queued"

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE, retries: int = 3, backoff: float = 1.0):
        if queue_size < 1:
            raise AlertConfigError("queue size must be at least 1")
        if retries < 0 or backoff < 0:
            raise AlertConfigError("retries and backoff must not be negative")
        self.retries = retries
        self.backoff = backoff
        self.stats = {"delivered": 0, "dropped": 0, "failed": 0}
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"garrison-alerts-{self.name}", daemon=True)
        self._thread.start()

    def deliver(self, message: Mapping[str, Any], done: Optional[Done] = None) -> bool:
        """Queue `message`; never blocks. A full queue drops it (logged, `done(DROPPED)`); False then."""
        if self._stop.is_set():
            reason = "closed"
        else:
            try:
                self._queue.put_nowait((message, done))
                return True
            except queue.Full:
                reason = f"queue full ({self._queue.maxsize})"
        self.stats["dropped"] += 1
        log.warning("%s: %s, alert dropped (violation %s)", self, reason, message.get("violationId"))
        _call(done, DROPPED, reason)
        return False

    def has_room(self) -> bool:
        """Whether `deliver` would queue a message now (the engine asks before handing one over)."""
        return not self._stop.is_set() and not self._queue.full()

    def send(self, message: Mapping[str, Any]) -> None:
        """Send once; raise RetryableError to be retried, any other exception to give up."""
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                message, done = item
                outcome, detail = self._send_with_retries(message)
                _call(done, outcome, detail)
            finally:
                self._queue.task_done()

    def _send_with_retries(self, message: Mapping[str, Any]):
        """(DELIVERED | FAILED | DROPPED, detail): DROPPED when closing cut the retries short."""
        for attempt in range(self.retries + 1):
            try:
                self.send(message)
                self.stats["delivered"] += 1
                return DELIVERED, ""
            except RetryableError as exc:
                if attempt == self.retries:
                    log.error(
                        "%s: alert for violation %s failed after %d attempts: %s",
                        self,
                        message.get("violationId"),
                        attempt + 1,
                        exc,
                    )
                    self.stats["failed"] += 1
                    return FAILED, f"{self}: {exc} (after {attempt + 1} attempts)"
                delay = min(self.backoff * (2**attempt), MAX_BACKOFF_SECONDS)
                log.info("%s: %s; retrying in %.1fs", self, exc, delay)
                if self._stop.is_set() or self._stop.wait(delay):
                    log.error(
                        "%s: closing, alert for violation %s not sent (%s); it stays pending",
                        self,
                        message.get("violationId"),
                        exc,
                    )
                    self.stats["dropped"] += 1
                    return DROPPED, f"closing: {exc}"
            except Exception as exc:  # a permanent failure (4xx, bad payload): do not retry
                log.error("%s: alert for violation %s failed: %s", self, message.get("violationId"), exc)
                self.stats["failed"] += 1
                return FAILED, f"{self}: {exc}"
        raise AssertionError("unreachable")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued was sent or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop the worker."""
        self.flush(timeout)
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=1.0)
        left = 0
        while True:  # what the worker did not reach: not sent, so not marked (it stays pending)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left += 1
                _call(item[1], DROPPED, "closed before it was sent")
        if left:
            self.stats["dropped"] += left
            log.warning("%s: closed with %d alerts unsent", self, left)


def _call(done: Optional[Done], outcome: str, detail: str) -> None:
    if done is None:
        return
    try:
        done(outcome, detail)
    except Exception:  # the caller's bookkeeping must not kill a worker
        log.exception("alert outcome callback failed")


class RetryableError(Exception):
    """A delivery failure worth retrying (5xx, 429, connection error, timeout)."""


class MqttTarget(QueuedTarget):
    """Publishes alerts as JSON to `topic` (fields: {thing}, {profile}, {behavior}, {event}).

    `client` is a connected paho client (anything with `.publish(topic, payload, qos=)`) or a
    callable `publish(topic, payload_bytes)`.
    """

    name = "mqtt"

    def __init__(
        self,
        client: Any,
        topic: str = DEFAULT_TOPIC,
        qos: int = 1,
        retain: bool = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        retries: int = 3,
        backoff: float = 1.0,
    ):
        if qos not in (0, 1, 2):
            raise AlertConfigError(f"mqtt qos must be 0, 1 or 2, got {qos!r}")
        try:
            topic.format(thing="t", profile="p", behavior="b", event="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise AlertConfigError(
                f"bad mqtt alert topic {topic!r}: use {{thing}}, {{profile}}, {{behavior}}, {{event}} ({exc})"
            ) from None
        self.client = client
        self.topic = topic
        self.qos = qos
        self.retain = retain
        super().__init__(queue_size, retries, backoff)

    def __str__(self) -> str:
        return f"mqtt alerts ({self.topic})"

    def topic_for(self, message: Mapping[str, Any]) -> str:
        return self.topic.format(
            thing=message.get("thingName", ""),
            profile=message.get("securityProfileName", ""),
            behavior=_behavior_name(message),
            event=message.get("violationEventType", ""),
        )

    def send(self, message: Mapping[str, Any]) -> None:
        topic = self.topic_for(message)
        payload = json.dumps(message, separators=(",", ":"), default=str).encode()
        if hasattr(self.client, "publish"):
            info = self.client.publish(topic, payload, qos=self.qos, retain=self.retain)
            rc = getattr(info, "rc", info if isinstance(info, int) else 0)
            if rc == _MQTT_ERR_NO_CONN and self.qos > 0:
                return  # paho keeps QoS>0 messages and sends them when the connection is back
            if rc:
                raise RetryableError(f"publish to {topic} failed (rc {rc})")
        else:
            try:
                self.client(topic, payload)
            except (OSError, ConnectionError, TimeoutError) as exc:
                raise RetryableError(f"publish to {topic} failed: {exc}") from exc


class WebhookTarget(QueuedTarget):
    """POSTs each alert as JSON to `url`; retries 5xx/429/connection errors with backoff."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 5.0,
        headers: Optional[Mapping[str, str]] = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AlertConfigError(f"webhook url must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise AlertConfigError("webhook timeout must be positive")
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise AlertConfigError(f"webhook url has no host: {url!r}")
        self.url = url
        self._parts = parts
        self.timeout = timeout  # the whole attempt: connect, send, status and headers
        self.max_response_bytes = max_response_bytes
        self.headers = {"Content-Type": "application/json", "User-Agent": "garrison-detect"}
        self.headers.update(headers or {})
        super().__init__(queue_size, retries, backoff)

    def __str__(self) -> str:
        return f"webhook {self.url}"

    def send(self, message: Mapping[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":"), default=str).encode()
        deadline = time.monotonic() + self.timeout
        parts = self._parts
        https = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = (_DeadlineHTTPS if https else _DeadlineHTTP)(
            parts.hostname, parts.port, timeout=self.timeout, deadline=deadline, cap=self.max_response_bytes
        )
        try:
            connection.request("POST", path, body=body, headers=self.headers)
            response = connection.getresponse()
            status, reason = response.status, response.reason  # the answer; its body is not read
        except _ResponseTooLarge:
            raise RetryableError(f"{self.url} answered more than {self.max_response_bytes} bytes") from None
        except (socket.timeout, TimeoutError):
            raise RetryableError(f"{self.url} did not answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, TLS, garbage
            raise RetryableError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        finally:
            connection.close()
        if 200 <= status < 300:
            return
        if status >= 500 or status == 429:
            raise RetryableError(f"HTTP {status}")
        raise RuntimeError(f"HTTP {status} {reason}")  # 3xx are not followed, 4xx not retried


class _ResponseTooLarge(Exception):
    pass


class _DeadlineReader(io.RawIOBase):
    """The socket as http.client reads it: each read waits at most until `deadline`, and the
    whole answer is capped at `cap` bytes (a socket timeout alone restarts with every byte)."""

    def __init__(self, sock: socket.socket, deadline: float, cap: int):
        self.sock, self.deadline, self.left = sock, deadline, cap

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        if self.left <= 0:
            raise _ResponseTooLarge()
        self.sock.settimeout(remaining)
        view = memoryview(buffer)[: self.left]
        n = self.sock.recv_into(view)
        self.left -= n
        return n


class _DeadlineSocket:
    """Wraps the connected socket so that sends and reads share one deadline."""

    def __init__(self, sock: socket.socket, deadline: float, cap: int):
        self._sock, self._deadline, self._cap = sock, deadline, cap

    def sendall(self, data) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self._sock.settimeout(remaining)  # since Python 3.5: the total for the whole sendall
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline, self._cap))

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _DeadlineHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, timeout: float, deadline: float, cap: int):
        super().__init__(host, port, timeout=timeout)
        self._deadline, self._cap = deadline, cap

    def connect(self) -> None:
        super().connect()
        self.sock = _DeadlineSocket(self.sock, self._deadline, self._cap)


class _DeadlineHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, timeout: float, deadline: float, cap: int):
        super().__init__(host, port, timeout=timeout)
        self._deadline, self._cap = deadline, cap

    def connect(self) -> None:
        super().connect()  # TCP connect and TLS handshake, each step within `timeout`
        self.sock = _DeadlineSocket(self.sock, self._deadline, self._cap)


class AlertDispatcher:
    """Fans each alert out to every target; never raises into the engine."""

    def __init__(self, targets: Iterable[Any] = ()):
        self.targets: List[Any] = list(targets)

    tracks_delivery = True  # the engine may pass done= and ask has_room()

    def deliver(self, message: Mapping[str, Any], done: Optional[Done] = None) -> None:
        """Hand `message` to every target. `done(outcome, detail)` is called once all of them
        have finished with it: DELIVERED if all delivered, DROPPED if any did not take it (it is
        to be handed over again), else FAILED with the failures' details."""
        collect = _AllDone(len(self.targets), done) if done is not None else None
        for target in self.targets:
            try:
                if collect is None:
                    target.deliver(message)
                elif hasattr(target, "has_room"):  # ours: reports its outcome when it has one
                    target.deliver(message, collect.one)
                else:  # a plain deliver(message): handed over is done
                    target.deliver(message)
                    collect.one(DELIVERED, "")
            except Exception as exc:  # a broken target must not stop the others, nor the engine
                log.exception("alert target %s failed", target)
                if collect is not None:
                    collect.one(FAILED, f"{target}: {exc}")
        if done is not None and not self.targets:
            done(DELIVERED, "")

    def has_room(self) -> bool:
        """Whether every target can take one more alert now."""
        return all(getattr(target, "has_room", lambda: True)() for target in self.targets)

    def flush(self, timeout: float = 10.0) -> bool:
        return all(target.flush(timeout) for target in self.targets)

    def close(self, timeout: float = 5.0) -> None:
        for target in self.targets:
            target.close(timeout)


class _AllDone:
    """Calls `done` once, when `count` targets have reported their outcome."""

    def __init__(self, count: int, done: Done):
        self.left, self.done = count, done
        self.outcomes: List[tuple] = []
        self.lock = threading.Lock()

    def one(self, outcome: str, detail: str) -> None:
        with self.lock:
            self.outcomes.append((outcome, detail))
            self.left -= 1
            if self.left:
                return
        kinds = {o for o, _ in self.outcomes}
        if DROPPED in kinds:
            _call(self.done, DROPPED, "; ".join(d for o, d in self.outcomes if o == DROPPED))
        elif FAILED in kinds:
            _call(self.done, FAILED, "; ".join(d for o, d in self.outcomes if o == FAILED))
        else:
            _call(self.done, DELIVERED, "")


_WEBHOOK_KEYS = {"url", "retries", "backoff_seconds", "timeout_seconds", "headers", "queue_size"}
_MQTT_KEYS = {"topic", "qos", "retain", "retries", "backoff_seconds", "queue_size"}


def _check_keys(conf: Mapping[str, Any], allowed: set, where: str) -> None:
    unknown = set(conf) - allowed - {"type"}
    if unknown:
        raise AlertConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(allowed))})"
        )


def _number(conf: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = conf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise AlertConfigError(f"{where}.{key} must be a non-negative number, got {value!r}")
    return value


def _webhook(conf: Any, where: str) -> WebhookTarget:
    if isinstance(conf, str):
        conf = {"url": conf}
    if not isinstance(conf, Mapping):
        raise AlertConfigError(f"{where} must be a URL or an object with a url")
    _check_keys(conf, _WEBHOOK_KEYS, where)
    headers = conf.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        raise AlertConfigError(f"{where}.headers must map header names to strings")
    url = conf.get("url")
    if not isinstance(url, str):
        raise AlertConfigError(f"{where}.url: webhook url must start with http:// or https://, got {url!r}")
    return WebhookTarget(
        url,
        retries=int(_number(conf, "retries", 3, where)),
        backoff=_number(conf, "backoff_seconds", 1.0, where),
        timeout=_number(conf, "timeout_seconds", 5.0, where) or 5.0,
        headers=headers,
        queue_size=int(_number(conf, "queue_size", DEFAULT_QUEUE_SIZE, where)),
    )


def _mqtt(conf: Any, publish: Any, where: str) -> Optional[MqttTarget]:
    if conf is True:
        conf = {}
    if not isinstance(conf, Mapping):
        raise AlertConfigError(f"{where} must be true or an object {{topic, qos}}")
    _check_keys(conf, _MQTT_KEYS, where)
    if publish is None:
        raise AlertConfigError(f"{where}: MQTT alerts need the engine's MQTT connection")
    return MqttTarget(
        publish,
        topic=conf.get("topic", DEFAULT_TOPIC),
        qos=conf.get("qos", 1),
        retain=bool(conf.get("retain", False)),
        retries=int(_number(conf, "retries", 3, where)),
        backoff=_number(conf, "backoff_seconds", 1.0, where),
        queue_size=int(_number(conf, "queue_size", DEFAULT_QUEUE_SIZE, where)),
    )


def targets_from_config(config: Any, mqtt_publish: Any = None, logger: Optional[logging.Logger] = None) -> List[Any]:
    """Alert targets from configuration.

    Either a mapping  {"log": true, "mqtt": {"topic": "garrison/alerts/{thing}", "qos": 1},
    "webhooks": ["https://...", {"url": ..., "retries": 3, "backoff_seconds": 1,
    "timeout_seconds": 5, "headers": {...}}]}
    or a list of {"type": "log" | "mqtt" | "webhook", ...}. `mqtt_publish` is the paho client (or
    publish callable) MQTT alerts go out on. Raises AlertConfigError with a one-line reason.
    """
    if config is None:
        return [LogTarget(logger)]
    targets: List[Any] = []
    if isinstance(config, Mapping):
        unknown = set(config) - {"log", "mqtt", "webhooks", "webhook"}
        if unknown:
            raise AlertConfigError(
                f"alerts: unknown setting(s) {', '.join(sorted(unknown))} (known: log, mqtt, webhooks)"
            )
        if config.get("log", True):
            targets.append(LogTarget(logger))
        if config.get("mqtt"):
            targets.append(_mqtt(config["mqtt"], mqtt_publish, "alerts.mqtt"))
        hooks = config.get("webhooks", config.get("webhook", []))
        if isinstance(hooks, (str, Mapping)):
            hooks = [hooks]
        if not isinstance(hooks, list):
            raise AlertConfigError("alerts.webhooks must be a list of URLs or objects")
        targets += [_webhook(hook, f"alerts.webhooks[{i}]") for i, hook in enumerate(hooks)]
        return targets
    if isinstance(config, list):
        for i, entry in enumerate(config):
            where = f"alerts[{i}]"
            kind = entry.get("type") if isinstance(entry, Mapping) else None
            if kind == "log":
                targets.append(LogTarget(logger))
            elif kind == "mqtt":
                targets.append(_mqtt(entry, mqtt_publish, where))
            elif kind == "webhook":
                targets.append(_webhook(entry, where))
            else:
                raise AlertConfigError(f"{where}: type must be log, mqtt or webhook, got {kind!r}")
        return targets
    raise AlertConfigError("alerts must be an object or a list of targets")
