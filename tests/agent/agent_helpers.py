"""Agent test helpers: a tiny Device Defender responder and an agent-subprocess runner."""
import os
import subprocess
import threading
import time
from typing import List, Optional

import paho.mqtt.client as mqtt
from fixtures import wait_for
from garrison.agent.transports.paho_compat import new_client
from garrison.wire import codec, replies, topics

AGENT = ["garrison-agent"]


def paho_client(client_id: str) -> mqtt.Client:
    return new_client(client_id)


class Responder:
    """Subscribes to every thing's metrics topics and answers like AWS IoT Device Defender.

    Things whose name starts with "reject" get a REJECTED reply (InvalidPayload); "silent"
    things get none. Every received (thing, fmt, decoded report) is kept in `received`.
    """

    def __init__(self, host: str, port: int, tls=None, auth=None):
        self.received: List[tuple] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho_client(f"responder-{os.getpid()}-{time.monotonic_ns()}")
        if tls:
            self.client.tls_set_context(tls)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "responder could not subscribe"

    def _on_connect(self, client, userdata, flags, rc, *rest):
        client.subscribe([(topic, 1) for topic in topics.ENGINE_SUBSCRIPTIONS])

    def _on_message(self, client, userdata, msg):
        thing, fmt = topics.parse_report_topic(msg.topic)
        doc = codec.decode(msg.payload, fmt)
        with self.lock:
            self.received.append((thing, fmt, doc))
        if thing.startswith("silent"):
            return
        header = doc.get("header") or doc.get("hed")
        rid = header.get("report_id", header.get("rid"))
        now_ms = int(time.time() * 1000)
        if thing.startswith("reject"):
            reply = replies.rejected(thing, fmt, rid, replies.INVALID_PAYLOAD, "test responder says no", now_ms)
        else:
            reply = replies.accepted(thing, fmt, rid, now_ms)
        client.publish(reply.topic, reply.payload, qos=1)

    def report_ids(self, thing: str) -> List[int]:
        with self.lock:
            docs = [doc for t, _, doc in self.received if t == thing]
        return [(d.get("header") or d.get("hed")).get("report_id", (d.get("header") or d.get("hed")).get("rid"))
                for d in docs]

    def wait_for(self, thing: str, count: int, timeout: float = 20.0) -> List[int]:
        """The thing's report ids once at least `count` arrived (the test fails after `timeout`)."""
        def enough():
            ids = self.report_ids(thing)
            return ids if len(ids) >= count else None
        return wait_for(enough, timeout, f"{count} report(s) from {thing}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def run_agent(*args: str, timeout: float = 60, env: Optional[dict] = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `garrison-agent` CLI as a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GARRISON_")}
    full_env.update(env or {})
    return subprocess.run(AGENT + list(args), capture_output=True, timeout=timeout, env=full_env, **kwargs)


