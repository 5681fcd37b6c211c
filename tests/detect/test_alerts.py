"""Alert delivery through real parts: an HTTP server on loopback, the Mosquitto fixture."""
import http.server
import json
import logging
import queue
import threading
import time

import pytest

from garrison.agent.transports.paho_compat import new_client
from garrison.detect.respond.alerts import (AlertConfigError, AlertDispatcher, AlertMessage, LogTarget, MqttTarget, WebhookTarget,
                           targets_from_config)
from fixtures import free_port, wait_for

T0 = 1_700_000_000_000


def message(thing="sensor-1", event="in-alarm", vid="v-1"):
    return AlertMessage("sensor-1" if thing is None else thing, "gateways", "ListeningPorts", {"ports": [22, 4444]},
                        vid, event, T0, threshold=None)


class Hook:
    """A real HTTP server on loopback that answers `fail_first` requests with `fail_status`."""

    def __init__(self, fail_first=0, fail_status=503):
        self.requests = []
        self.fail_first = fail_first
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests.append((dict(self.headers), body))
                status = fail_status if len(hook.requests) <= hook.fail_first else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory():
    made = []

    def make(**kwargs):
        made.append(Hook(**kwargs))
        return made[-1]
    yield make
    for hook in made:
        hook.close()


def test_alert_message_shape():
    msg = AlertMessage("t", "p", "b", {"count": 3}, "vid", "alarm-cleared", 123.0, threshold=7.5, extra=None)
    assert msg == {"thingName": "t", "securityProfileName": "p", "behavior": {"name": "b"}, "metricValue": {"count": 3},
                   "violationId": "vid", "violationEventType": "alarm-cleared", "violationEventTime": 123,
                   "threshold": 7.5}
    with pytest.raises(ValueError, match="violationEventType"):
        AlertMessage("t", "p", "b", None, "v", "exploded", 1)


def test_alert_message_takes_a_behavior_object():
    from garrison.detect.judge.profiles import load_profile
    behavior = load_profile({"securityProfileName": "p", "behaviors": [{
        "name": "b", "metric": "aws:num-listening-tcp-ports",
        "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}]}).behaviors[0]
    msg = AlertMessage("t", "p", behavior, {"count": 9}, "v", "in-alarm", 1)
    assert msg["behavior"] == {"name": "b", "metric": "aws:num-listening-tcp-ports",
                               "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}


def test_webhook_delivers_json_with_headers(hook_factory):
    hook = hook_factory()
    target = WebhookTarget(hook.url, headers={"Authorization": "Bearer s3cret"})
    target.deliver(message())
    assert target.flush(15)
    target.close()
    headers, body = hook.requests[0]
    assert json.loads(body) == message()
    assert headers["Content-Type"] == "application/json" and headers["Authorization"] == "Bearer s3cret"
    assert target.stats == {"delivered": 1, "dropped": 0, "failed": 0}


def test_webhook_retries_server_errors_then_delivers(hook_factory):
    hook = hook_factory(fail_first=2, fail_status=503)
    target = WebhookTarget(hook.url, retries=3, backoff=0.01)
    target.deliver(message())
    assert target.flush(15)
    target.close()
    assert len(hook.requests) == 3
    assert all(json.loads(body)["violationId"] == "v-1" for _, body in hook.requests)
    assert target.stats["delivered"] == 1 and target.stats["failed"] == 0


def test_webhook_gives_up_after_the_retries(hook_factory, caplog):
    hook = hook_factory(fail_first=100, fail_status=500)
    target = WebhookTarget(hook.url, retries=2, backoff=0.01)
    with caplog.at_level(logging.ERROR, logger="garrison.alerts"):
        target.deliver(message())
        assert target.flush(15)
    target.close()
    assert len(hook.requests) == 3
    assert target.stats == {"delivered": 0, "dropped": 0, "failed": 1}
    assert "failed after 3 attempts: HTTP 500" in caplog.text


def test_webhook_does_not_retry_client_errors(hook_factory):
    hook = hook_factory(fail_first=100, fail_status=400)
    target = WebhookTarget(hook.url, retries=3, backoff=0.01)
    target.deliver(message())
    assert target.flush(15)
    target.close()
    assert len(hook.requests) == 1 and target.stats["failed"] == 1


def test_webhook_retries_connection_refused_until_the_server_comes_up(caplog):
    port = free_port()
    target = WebhookTarget(f"http://127.0.0.1:{port}/a", retries=10, backoff=0.05, timeout=2)
    with caplog.at_level(logging.INFO, logger="garrison.alerts"):
        target.deliver(message())
        # the first attempt really was refused (and is being retried) before the server exists
        wait_for(lambda: "Connection refused" in caplog.text and "retrying in" in caplog.text, 15,
                 "a refused first attempt")
    assert target.stats == {"delivered": 0, "dropped": 0, "failed": 0}
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert target.flush(30)
        assert len(received) == 1 and target.stats["delivered"] == 1
    finally:
        target.close()
        server.shutdown()
        server.server_close()


def test_a_full_queue_drops_and_never_blocks(hook_factory, caplog):
    gate = threading.Event()

    class Slow(WebhookTarget):
        def send(self, msg):
            gate.wait(15)

    target = Slow("http://127.0.0.1:9/", queue_size=2, retries=0)
    with caplog.at_level(logging.WARNING, logger="garrison.alerts"):
        producer = threading.Thread(target=lambda: [target.deliver(message(vid=f"v-{i}")) for i in range(10)])
        producer.start()
        producer.join(10)
        assert not producer.is_alive()                    # done while the sender is still stuck
    gate.set()
    assert target.flush(15)
    target.close()
    assert target.stats["dropped"] >= 7
    assert target.stats["delivered"] + target.stats["dropped"] == 10
    assert "queue full (2), alert dropped" in caplog.text


def test_mqtt_target_publishes_to_the_real_broker(mosquitto):
    got = queue.Queue()
    sub = new_client("alert-sub")
    sub.on_message = lambda c, u, m: got.put((m.topic, json.loads(m.payload)))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    sub.subscribe("garrison/alerts/#", qos=1)
    assert subscribed.wait(10)

    pub = new_client("engine")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    target = MqttTarget(pub)
    custom = MqttTarget(pub, topic="garrison/alerts/{profile}/{behavior}/{event}", qos=0)
    try:
        target.deliver(message(thing="sensor-9"))
        custom.deliver(message(event="alarm-cleared"))
        seen = {}
        for _ in range(2):
            topic, body = got.get(timeout=15)
            seen[topic] = body
        assert seen["garrison/alerts/sensor-9"]["thingName"] == "sensor-9"
        assert seen["garrison/alerts/gateways/ListeningPorts/alarm-cleared"]["violationEventType"] == "alarm-cleared"
        assert target.flush(10) and target.stats["delivered"] == 1
    finally:
        target.close()
        custom.close()
        for client in (pub, sub):
            client.loop_stop()
            client.disconnect()


def test_mqtt_target_with_a_publish_callable():
    sent = []
    target = MqttTarget(lambda topic, payload: sent.append((topic, json.loads(payload))))
    target.deliver(message(thing="t-1"))
    assert target.flush(10)
    target.close()
    assert sent == [("garrison/alerts/t-1", message(thing="t-1"))]


def test_mqtt_target_retries_a_failing_publish():
    calls = []

    def flaky(topic, payload):
        calls.append(topic)
        if len(calls) < 3:
            raise ConnectionError("broker away")
    target = MqttTarget(flaky, retries=5, backoff=0.01)
    target.deliver(message())
    assert target.flush(10)
    target.close()
    assert len(calls) == 3 and target.stats["delivered"] == 1


def test_log_target(caplog):
    with caplog.at_level(logging.INFO, logger="garrison.alerts"):
        LogTarget().deliver(message())
        LogTarget().deliver(message(event="alarm-cleared"))
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "INFO"]
    assert '"violationId": "v-1"' in caplog.records[0].getMessage()


def test_dispatcher_fans_out_and_survives_a_broken_target(caplog):
    sent = []

    class Broken:
        def deliver(self, msg):
            raise RuntimeError("boom")

        def flush(self, timeout):
            return True

        def close(self, timeout):
            pass

    mqtt_target = MqttTarget(lambda t, p: sent.append(t))
    dispatcher = AlertDispatcher([Broken(), mqtt_target])
    dispatcher.deliver(message())
    assert dispatcher.flush(10)
    dispatcher.close()
    assert sent == ["garrison/alerts/sensor-1"]
    assert "alert target" in caplog.text


def test_targets_from_config_mapping(hook_factory):
    hook = hook_factory()
    targets = targets_from_config({"log": True, "mqtt": {"topic": "a/{thing}", "qos": 0},
                                   "webhooks": [hook.url, {"url": hook.url, "retries": 1, "backoff_seconds": 0.5,
                                                           "timeout_seconds": 2, "headers": {"X-K": "v"}}]},
                                  mqtt_publish=lambda t, p: None)
    try:
        assert [type(t).__name__ for t in targets] == ["LogTarget", "MqttTarget", "WebhookTarget", "WebhookTarget"]
        assert (targets[1].topic, targets[1].qos) == ("a/{thing}", 0)
        assert (targets[3].retries, targets[3].backoff, targets[3].timeout) == (1, 0.5, 2)
        assert targets[3].headers["X-K"] == "v"
    finally:
        AlertDispatcher(targets).close()


def test_targets_from_config_list_and_default():
    targets = targets_from_config([{"type": "log"}, {"type": "webhook", "url": "https://example.invalid/h"}])
    assert [type(t).__name__ for t in targets] == ["LogTarget", "WebhookTarget"]
    AlertDispatcher(targets).close()
    assert [type(t).__name__ for t in targets_from_config(None)] == ["LogTarget"]


@pytest.mark.parametrize("config, error", [
    ({"email": "x"}, "unknown setting(s) email"),
    ({"webhooks": ["ftp://x"]}, "webhook url must start with http:// or https://"),
    ({"webhooks": [{"url": "http://x", "retry": 3}]}, "alerts.webhooks[0]: unknown setting(s) retry"),
    ({"webhooks": [{"url": "http://x", "retries": -1}]}, "alerts.webhooks[0].retries must be a non-negative"),
    ({"webhooks": [{"url": "http://x", "headers": {"a": 1}}]}, "headers must map header names to strings"),
    ({"mqtt": {"topic": "a/{nope}"}}, "bad mqtt alert topic"),
    ({"mqtt": {"qos": 3}}, "mqtt qos must be 0, 1 or 2"),
    ([{"type": "pager"}], "alerts[0]: type must be log, mqtt or webhook"),
    ("yes", "alerts must be an object or a list"),
])
def test_bad_configs_are_one_line_errors(config, error):
    with pytest.raises(AlertConfigError) as info:
        targets_from_config(config, mqtt_publish=lambda t, p: None)
    assert error in str(info.value)


def test_mqtt_config_without_a_connection_is_refused():
    with pytest.raises(AlertConfigError, match="need the engine's MQTT connection"):
        targets_from_config({"mqtt": True})


def test_mqtt_alert_published_while_disconnected_arrives_after_connect(mosquitto):
    got = queue.Queue()
    sub = new_client("alert-sub-2")
    sub.on_message = lambda c, u, m: got.put(json.loads(m.payload))
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    sub.subscribe("garrison/alerts/#", qos=1)
    assert subscribed.wait(10)
    pub = new_client("engine-2")   # not connected yet
    target = MqttTarget(pub, qos=1)
    try:
        target.deliver(message(vid="queued-in-paho"))
        assert target.flush(10) and target.stats["delivered"] == 1
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        assert got.get(timeout=15)["violationId"] == "queued-in-paho"
    finally:
        target.close()
        for client in (pub, sub):
            client.loop_stop()
            client.disconnect()


# ---------------------------------------------------- slow webhooks, outcomes, the outbox (issue 10)

class SlowHook:
    """A real TCP server on loopback that reads a request and then answers one byte every
    `every` seconds (for at most 60 s), or, once `fast` is set, answers 204 at once."""

    def __init__(self, every=0.3):
        import socket
        self.every = every
        self.fast = threading.Event()
        self.stop = threading.Event()
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")][0])
                while len(body) < length:
                    body += conn.recv(65536)
                if self.fast.is_set():
                    self.requests.append(json.loads(body))
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    return
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                deadline = time.monotonic() + 60
                for i in range(len(answer)):
                    if self.stop.wait(self.every) or time.monotonic() > deadline:
                        return
                    conn.sendall(answer[i:i + 1])
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def slow_hook():
    hook = SlowHook()
    yield hook
    hook.close()


def test_a_webhook_answering_one_byte_at_a_time_is_cut_off_at_the_deadline(slow_hook, caplog):
    target = WebhookTarget(slow_hook.url, retries=0, timeout=1.0)
    outcomes = []
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="garrison.alerts"):
        target.deliver(message(), done=lambda outcome, detail: outcomes.append((outcome, detail)))
        assert target.flush(15), "the worker is still stuck on the slow webhook"
    elapsed = time.monotonic() - started
    target.close()
    assert elapsed < 4, f"one attempt took {elapsed:.1f} s with a 1 s deadline"
    assert target.stats == {"delivered": 0, "dropped": 0, "failed": 1}
    assert outcomes == [("failed", f"webhook {slow_hook.url}: {slow_hook.url} did not answer within 1 s "
                                   "(after 1 attempts)")]


def test_a_webhook_answer_is_read_up_to_a_size_cap():
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sent = []

    def flood():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for i in range(200):   # 200 KB of headers: http.client alone would read 100 of them
                    conn.sendall(f"X-Filler-{i}: {'a' * 1000}\r\n".encode())
                    sent.append(i)
                conn.sendall(b"\r\n")
            except OSError:
                pass
    threading.Thread(target=flood, daemon=True).start()
    target = WebhookTarget(f"http://127.0.0.1:{server.getsockname()[1]}/", retries=0, timeout=10,
                           max_response_bytes=16 * 1024)
    outcomes = []
    try:
        target.deliver(message(), done=lambda outcome, detail: outcomes.append((outcome, detail)))
        assert target.flush(15)
    finally:
        target.close()
        server.close()
    assert outcomes and outcomes[0][0] == "failed"
    assert "answered more than 16384 bytes" in outcomes[0][1]


def _alarming_engine(db, dispatcher, things):
    from garrison.detect.clock import ManualClock
    from garrison.detect.config import Config
    from garrison.detect.engine import Engine
    from garrison.detect.state.store import Store
    from engine_support import max_connections, validated
    clock = ManualClock()
    engine = Engine(Store(db), clock, Config(), alerts=dispatcher, ml=None)
    engine.apply_profile(max_connections(limit=5), attach="all")
    for i in range(things):
        clock.advance(1)
        assert len(engine.accept(f"dev-{i}", validated(connections=9), clock.now_ms())) == 1  # in-alarm
    return engine


def test_alerts_a_slow_webhook_holds_up_stay_pending_and_none_is_marked_sent_unsent(slow_hook, tmp_path):
    # the case, scaled: 20 alerts, a queue of 5, a webhook that answers one byte at a time
    target = WebhookTarget(slow_hook.url, retries=0, timeout=0.5, queue_size=5)
    engine = _alarming_engine(tmp_path / "e.db", AlertDispatcher([target]), 20)
    try:
        assert len(engine.store.pending_alerts()) == 20       # none delivered yet: none marked
        assert target.stats["dropped"] == 0                   # the engine gave it only what fits
        wait_for(lambda: target.stats["failed"] >= 2, 15, "two deliveries to time out")
        slow_hook.fast.set()                                  # the webhook recovers
        wait_for(lambda: engine.dispatch_alerts() >= 0 and not engine.store.pending_alerts()
                 and target._queue.unfinished_tasks == 0, 30, "the outbox to empty")
        failed = {row["seq"] for row in engine.store.alert_failures()}
        delivered = {m["violationId"] for m in slow_hook.requests}
        events = engine.store.list_events()
        assert len(events) == 20 and target.stats["dropped"] == 0
        assert len(failed) == target.stats["failed"] >= 2      # given up, recorded as such
        assert len(delivered) == target.stats["delivered"] == 20 - len(failed)
        for event in events:                                  # each one either arrived or is a recorded failure
            assert (event["violation_id"] in delivered) != (event["seq"] in failed)
        assert all("did not answer within 0.5 s" in row["detail"] for row in engine.store.alert_failures())
    finally:
        target.close(0)
        engine.store.close()


def test_alerts_not_delivered_before_a_stop_are_sent_after_the_restart(tmp_path, slow_hook):
    db = tmp_path / "e.db"
    first = WebhookTarget(slow_hook.url, retries=0, timeout=30, queue_size=2)
    engine = _alarming_engine(db, AlertDispatcher([first]), 6)
    assert len(engine.store.pending_alerts()) == 6
    first.close(0.2)                                          # stop while the webhook is still answering
    engine.store.close()
    from garrison.detect.clock import ManualClock
    from garrison.detect.config import Config
    from garrison.detect.engine import Engine
    from garrison.detect.state.store import Store
    slow_hook.fast.set()
    second = WebhookTarget(slow_hook.url, retries=0, timeout=5)
    engine = Engine(Store(db), ManualClock(), Config(), alerts=AlertDispatcher([second]), ml=None)
    try:
        assert len(engine.store.pending_alerts()) == 6        # the restart still knows they are unsent
        engine.dispatch_alerts()
        wait_for(lambda: not engine.store.pending_alerts(), 20, "the pending alerts to go out")
        assert sorted(m["thingName"] for m in slow_hook.requests) == [f"dev-{i}" for i in range(6)]
        assert engine.store.alert_failures() == []
    finally:
        second.close(0)
        engine.store.close()
