"""A stream of reports from many things, and a `garrison-detect serve` child process to kill.

Shared by tests/reliability (crash safety) and bench/bench_burst.py.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from garrison.agent import report as wire
from garrison.agent.transports.paho_compat import new_client
from garrison.collectors.base import Connection

REPO = Path(__file__).resolve().parents[2]
CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]
LIMIT = 5  # the profile: fewer than LIMIT established connections is normal
PROFILE = {"securityProfileName": "Crash", "behaviors": [{
    "name": "conns", "metric": "aws:num-established-tcp-connections",
    "criteria": {"comparisonOperator": "less-than", "value": {"count": LIMIT},
                 "consecutiveDatapointsToAlarm": 1, "consecutiveDatapointsToClear": 1}}]}


def cli(db: Path, *argv: str) -> str:
    proc = subprocess.run(CLI + list(argv) + ["--db", str(db)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"garrison-detect {' '.join(argv)}: {proc.stderr}")
    return proc.stdout


def report(report_id: int, connections: int) -> bytes:
    conns = [Connection(4, "192.0.2.10", 40000 + i, f"198.51.100.{i % 250 + 1}", 443, "eth0")
             for i in range(connections)]
    return wire.encode(wire.build(report_id, connections=conns), "json")


class Engine:
    """`garrison-detect serve` as a child process, on one database."""

    def __init__(self, workdir: Path, broker_url: str, *extra: str, memory_limit: Optional[int] = None):
        """memory_limit: the process's address space in bytes (RLIMIT_AS, as `prlimit --as`)."""
        self.workdir, self.broker_url, self.extra = Path(workdir), broker_url, extra
        self.memory_limit = memory_limit
        self.db = self.workdir / "engine.db"
        self.config = self.workdir / "engine.toml"
        self.config.write_text("[alerts]\nlog = false\nmqtt = false\n")
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def start(self) -> "Engine":
        self.starts += 1
        self.log = self.workdir / f"serve-{self.starts}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(CLI + ["serve", "--broker", self.broker_url, "--db", str(self.db),
                                                "--config", str(self.config), "--min-report-interval", "0",
                                                *self.extra], stdout=out, stderr=out, cwd=REPO,
                                         preexec_fn=self._limit if self.memory_limit else None,
                                         env=dict(os.environ, MALLOC_ARENA_MAX="2") if self.memory_limit else None)
        deadline = time.monotonic() + 60
        while "listening for Device Defender reports" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not connect: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def _limit(self) -> None:  # in the child, before exec
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0


class Replies:
    """A paho subscriber that records every reply: (thing, report id) -> list of statuses."""

    def __init__(self, host: str, port: int):
        self.by_report: Dict[Tuple[str, int], List[str]] = {}
        self.count = 0
        self.lock = threading.Lock()
        self.ready = threading.Event()
        client_id = f"replies-{os.getpid()}-{time.monotonic_ns()}"
        self.client = new_client(client_id)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.connect(host, port)
        self.client.subscribe("$aws/things/+/defender/metrics/json/+", qos=1)
        self.client.loop_start()
        if not self.ready.wait(20):
            raise RuntimeError("could not subscribe to the replies")

    def _on_message(self, client, userdata, msg):
        body = json.loads(msg.payload)
        key = (msg.topic.split("/")[2], body.get("reportId"))
        with self.lock:
            self.by_report.setdefault(key, []).append(body["status"])
            self.count += 1

    def answered(self) -> int:
        with self.lock:
            return len(self.by_report)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Publisher:
    """Publishes reports QoS 1 from a thread: `plan` is a list of (thing, report id, payload)."""

    def __init__(self, host: str, port: int, plan: List[Tuple[str, int, bytes]], rate: Optional[float] = None):
        self.plan, self.rate = plan, rate
        self.published = 0
        client_id = f"publisher-{os.getpid()}-{time.monotonic_ns()}"
        self.client = new_client(client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Publisher":
        self.started = time.monotonic()
        self.thread.start()
        return self

    def _run(self) -> None:
        infos = []
        for i, (thing, _, payload) in enumerate(self.plan):
            if self.rate:
                delay = self.started + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            infos.append(self.client.publish(wire.topic(thing, "json"), payload, qos=1))
            self.published += 1
        for info in infos:
            info.wait_for_publish(60)
        self.finished = time.monotonic()

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
