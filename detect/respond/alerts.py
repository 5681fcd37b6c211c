"""Alert messages and where they go: the log, an MQTT topic, webhooks.

The message has the shape of Device Defender's SNS notification (times in ms):
  {"thingName", "securityProfileName", "behavior": {name, metric, criteria},
   "metricValue": {"count": 3} | {"ports": [...]} | ..., "violationId",
   "violationEventType": "in-alarm" | "alarm-cleared" | "alarm-invalidated", "violationEventTime"}
plus our extras when known (e.g. "threshold" for statistical behaviors).

Delivery never blocks the engine: each remote target owns a bounded queue and one worker thread;
when the queue is full the alert is dropped and the drop logged (and counted in `stats`).
Webhooks retry 5xx, 429 and connection errors with exponential backoff.
"""
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterable, List, Mapping, Optional

log = logging.getLogger("garrison.alerts")

_MQTT_ERR_NO_CONN = 4  # paho's MQTT_ERR_NO_CONN (the same in paho 1.6 and 2.x)

EVENT_TYPES = ("in-alarm", "alarm-cleared", "alarm-invalidated")
DEFAULT_TOPIC = "garrison/alerts/{thing}"
DEFAULT_QUEUE_SIZE = 1000
MAX_BACKOFF_SECONDS = 60.0


class AlertConfigError(ValueError):
    """A bad alert target configuration."""


def AlertMessage(thingName: str, securityProfileName: str, behavior: Any, metricValue: Optional[Dict[str, Any]],
                 violationId: str, violationEventType: str, violationEventTime: int,
                 **extras: Any) -> Dict[str, Any]:
    """An alert in the SNS-like shape. `behavior` may be a garrison.detect.judge.profiles.Behavior, its AWS
    dict, or a behavior name; extras (e.g. threshold=...) are added as they are."""
    if violationEventType not in EVENT_TYPES:
        raise ValueError(f"violationEventType must be one of {EVENT_TYPES}, got {violationEventType!r}")
    if hasattr(behavior, "to_dict"):
        behavior = behavior.to_dict()
    elif isinstance(behavior, str):
        behavior = {"name": behavior}
    message = {
        "thingName": thingName, "securityProfileName": securityProfileName, "behavior": behavior,
        "metricValue": metricValue, "violationId": violationId,
        "violationEventType": violationEventType, "violationEventTime": int(violationEventTime),
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

    def deliver(self, message: Mapping[str, Any]) -> None:
        level = logging.WARNING if message.get("violationEventType") == "in-alarm" else logging.INFO
        self.logger.log(level, "alert %s", json.dumps(message, sort_keys=True, default=str))
        self.stats["delivered"] += 1

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
        self._queue: "queue.Queue[Optional[Mapping[str, Any]]]" = queue.Queue(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"garrison-alerts-{self.name}", daemon=True)
        self._thread.start()

    def deliver(self, message: Mapping[str, Any]) -> None:
        """Queue `message`; never blocks. A full queue drops it (logged)."""
        if self._stop.is_set():
            self.stats["dropped"] += 1
            log.warning("%s: closed, alert dropped (violation %s)", self, message.get("violationId"))
            return
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.stats["dropped"] += 1
            log.warning("%s: queue full (%d), alert dropped (violation %s)", self, self._queue.maxsize,
                        message.get("violationId"))

    def send(self, message: Mapping[str, Any]) -> None:
        """Send once; raise RetryableError to be retried, any other exception to give up."""
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            try:
                if message is None:
                    return
                self._send_with_retries(message)
            finally:
                self._queue.task_done()

    def _send_with_retries(self, message: Mapping[str, Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                self.send(message)
                self.stats["delivered"] += 1
                return
            except RetryableError as exc:
                if attempt == self.retries or self._stop.is_set():
                    log.error("%s: alert for violation %s failed after %d attempts: %s", self,
                              message.get("violationId"), attempt + 1, exc)
                    break
                delay = min(self.backoff * (2 ** attempt), MAX_BACKOFF_SECONDS)
                log.info("%s: %s; retrying in %.1fs", self, exc, delay)
                if self._stop.wait(delay):
                    log.error("%s: closing, alert for violation %s abandoned", self, message.get("violationId"))
                    break
            except Exception as exc:  # a permanent failure (4xx, bad payload): do not retry
                log.error("%s: alert for violation %s failed: %s", self, message.get("violationId"), exc)
                break
        self.stats["failed"] += 1

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
        left = self._queue.qsize()
        if left:
            self.stats["dropped"] += left
            log.warning("%s: closed with %d alerts unsent", self, left)


class RetryableError(Exception):
    """A delivery failure worth retrying (5xx, 429, connection error, timeout)."""


class MqttTarget(QueuedTarget):
    """Publishes alerts as JSON to `topic` (fields: {thing}, {profile}, {behavior}, {event}).

    `client` is a connected paho client (anything with `.publish(topic, payload, qos=)`) or a
    callable `publish(topic, payload_bytes)`.
    """

    name = "mqtt"

    def __init__(self, client: Any, topic: str = DEFAULT_TOPIC, qos: int = 1, retain: bool = False,
                 queue_size: int = DEFAULT_QUEUE_SIZE, retries: int = 3, backoff: float = 1.0):
        if qos not in (0, 1, 2):
            raise AlertConfigError(f"mqtt qos must be 0, 1 or 2, got {qos!r}")
        try:
            topic.format(thing="t", profile="p", behavior="b", event="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise AlertConfigError(f"bad mqtt alert topic {topic!r}: use {{thing}}, {{profile}}, "
                                   f"{{behavior}}, {{event}} ({exc})") from None
        self.client = client
        self.topic = topic
        self.qos = qos
        self.retain = retain
        super().__init__(queue_size, retries, backoff)

    def __str__(self) -> str:
        return f"mqtt alerts ({self.topic})"

    def topic_for(self, message: Mapping[str, Any]) -> str:
        return self.topic.format(thing=message.get("thingName", ""), profile=message.get("securityProfileName", ""),
                                 behavior=_behavior_name(message), event=message.get("violationEventType", ""))

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

    def __init__(self, url: str, retries: int = 3, backoff: float = 1.0, timeout: float = 5.0,
                 headers: Optional[Mapping[str, str]] = None, queue_size: int = DEFAULT_QUEUE_SIZE):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AlertConfigError(f"webhook url must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise AlertConfigError("webhook timeout must be positive")
        self.url = url
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "User-Agent": "garrison-detect"}
        self.headers.update(headers or {})
        super().__init__(queue_size, retries, backoff)

    def __str__(self) -> str:
        return f"webhook {self.url}"

    def send(self, message: Mapping[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":"), default=str).encode()
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise RetryableError(f"HTTP {exc.code}") from None
            raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
            raise RetryableError(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None


class AlertDispatcher:
    """Fans each alert out to every target; never raises into the engine."""

    def __init__(self, targets: Iterable[Any] = ()):
        self.targets: List[Any] = list(targets)

    def deliver(self, message: Mapping[str, Any]) -> None:
        for target in self.targets:
            try:
                target.deliver(message)
            except Exception:  # a broken target must not stop the others, nor the engine
                log.exception("alert target %s failed", target)

    def flush(self, timeout: float = 10.0) -> bool:
        return all(target.flush(timeout) for target in self.targets)

    def close(self, timeout: float = 5.0) -> None:
        for target in self.targets:
            target.close(timeout)


_WEBHOOK_KEYS = {"url", "retries", "backoff_seconds", "timeout_seconds", "headers", "queue_size"}
_MQTT_KEYS = {"topic", "qos", "retain", "retries", "backoff_seconds", "queue_size"}


def _check_keys(conf: Mapping[str, Any], allowed: set, where: str) -> None:
    unknown = set(conf) - allowed - {"type"}
    if unknown:
        raise AlertConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(sorted(allowed))})")


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
    return WebhookTarget(conf.get("url"), retries=int(_number(conf, "retries", 3, where)),
                         backoff=_number(conf, "backoff_seconds", 1.0, where),
                         timeout=_number(conf, "timeout_seconds", 5.0, where) or 5.0, headers=headers,
                         queue_size=int(_number(conf, "queue_size", DEFAULT_QUEUE_SIZE, where)))


def _mqtt(conf: Any, publish: Any, where: str) -> Optional[MqttTarget]:
    if conf is True:
        conf = {}
    if not isinstance(conf, Mapping):
        raise AlertConfigError(f"{where} must be true or an object {{topic, qos}}")
    _check_keys(conf, _MQTT_KEYS, where)
    if publish is None:
        raise AlertConfigError(f"{where}: MQTT alerts need the engine's MQTT connection")
    return MqttTarget(publish, topic=conf.get("topic", DEFAULT_TOPIC), qos=conf.get("qos", 1),
                      retain=bool(conf.get("retain", False)), retries=int(_number(conf, "retries", 3, where)),
                      backoff=_number(conf, "backoff_seconds", 1.0, where),
                      queue_size=int(_number(conf, "queue_size", DEFAULT_QUEUE_SIZE, where)))


def targets_from_config(config: Any, mqtt_publish: Any = None,
                        logger: Optional[logging.Logger] = None) -> List[Any]:
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
            raise AlertConfigError(f"alerts: unknown setting(s) {', '.join(sorted(unknown))} "
                                   "(known: log, mqtt, webhooks)")
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

