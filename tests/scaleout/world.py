"""The scale-out deployment for tests and the benchmark: `garrison-detect serve --nats` worker
processes on a real 3-node NATS cluster and a real PostgreSQL (tests/scaleout.py), and devices
that speak MQTT to the NATS nodes' MQTT listeners."""
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
from fixtures import wait_for

CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]
PARTITIONS = 4
CONFIG = """
sweep_interval = "1s"
fleet_stats_interval = "1s"
[alerts]
log = true
mqtt = {topic = "garrison/alerts/{thing}", qos = 1}
"""


def cli(db: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(CLI + list(argv) + ["--db", db], capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


class Worker:
    """One `garrison-detect serve --nats` process."""

    def __init__(self, workdir: Path, nats_urls: List[str], dsn: str, index: int = 0, workers: int = 1,
                 partitions: int = PARTITIONS, extra: Tuple[str, ...] = ()):
        self.workdir, self.nats_urls, self.dsn = Path(workdir), nats_urls, dsn
        self.index, self.workers, self.partitions, self.extra = index, workers, partitions, extra
        self.config = self.workdir / "worker.toml"
        self.config.write_text(CONFIG)
        self.proc: Optional[subprocess.Popen] = None
        self.log: Optional[Path] = None

    def start(self, timeout: float = 30) -> "Worker":
        self.log = self.workdir / f"worker-{self.index}-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                CLI + ["serve", "--nats", ",".join(self.nats_urls), "--db", self.dsn, "--config", str(self.config),
                       "--min-report-interval", "0", "--worker-index", str(self.index), "--workers",
                       str(self.workers), "--partition-count", str(self.partitions), *self.extra],
                stdout=out, stderr=out)
        wait_for(lambda: "serving:" in self.text() or self.proc.poll() is not None, timeout, "the worker to start")
        assert self.proc.poll() is None, self.text()
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0


def owners(dsn: str) -> Dict[int, str]:
    """partition -> the application name of the worker session holding its lease
    ("garrison-detect[PREFERRED,...]")."""
    import psycopg
    from garrison.detect.ingest.leases import OWN
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT l.objid::bigint, a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                            "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                            "AND l.classid::bigint = %s AND l.objsubid = 2", (OWN,)).fetchall()
    return {int(p): name for p, name in rows}


class Device:
    """An MQTT client on one NATS node: publishes reports (QoS 1), records replies and alerts."""

    def __init__(self, host: str, port: int, name: str = "device", inflight: int = 200, subscribe: bool = True,
                 persistent: bool = False):
        """persistent: a persistent session (clean_session=False), so replies published while the
        connection is down (a NATS node failing over) wait for the device, as an agent's do."""
        self.messages: List[Tuple[str, dict]] = []
        self.by_report: Dict[Tuple[str, int], List[str]] = {}
        self.first_reply: Dict[Tuple[str, int], float] = {}  # time.monotonic() of each report's first reply
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = new_client(f"{name}-{os.getpid()}-{time.monotonic_ns()}", clean_session=not persistent)
        self.client.max_inflight_messages_set(inflight)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(host, port)
        if subscribe:  # on every (re)connection, as an agent does
            self.client.on_connect = lambda client, *a: client.subscribe(
                [("$aws/things/+/defender/metrics/+/accepted", 1), ("$aws/things/+/defender/metrics/+/rejected", 1),
                 ("garrison/alerts/#", 1)])
        self.client.loop_start()
        if subscribe:
            assert self.subscribed.wait(20), "no SUBACK from the NATS MQTT listener"

    def _on_message(self, client, userdata, msg):
        payload = wire.decode(msg.payload, "cbor" if "/cbor/" in msg.topic else "json")
        with self.lock:
            self.messages.append((msg.topic, payload))
            if msg.topic.startswith("$aws/"):
                key = (msg.topic.split("/")[2], payload.get("reportId"))
                self.first_reply.setdefault(key, time.monotonic())
                code = payload.get("statusDetails", {}).get("ErrorCode")
                self.by_report.setdefault(key, []).append(payload["status"] + (f":{code}" if code else ""))

    def find(self, predicate):
        with self.lock:
            return [m for m in self.messages if predicate(*m)]

    def answered(self) -> int:
        with self.lock:
            return len(self.by_report)

    def alerts(self, thing, event_type=None):
        return [p for t, p in self.find(lambda t, p: t == f"garrison/alerts/{thing}")
                if event_type in (None, p["violationEventType"])]

    def publish(self, thing: str, payload: bytes, fmt: str = "json"):
        return self.client.publish(wire.topic(thing, fmt), payload, qos=1)

    def send(self, thing, report, fmt="json", short=False, payload=None, timeout=20):
        """Publish until a reply to this report id arrives (a resend is safe); returns the reply."""
        payload = payload or wire.encode(report, fmt, short_names=short)
        report_id = report["header"]["report_id"]
        base = wire.topic(thing, fmt)

        def reply():
            found = self.find(lambda t, p: t.startswith(base + "/") and p.get("reportId") == report_id)
            return found[-1] if found else None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.client.publish(base, payload, qos=1)
            try:
                return wait_for(reply, 3, f"a reply to {thing}")
            except AssertionError:
                continue
        raise AssertionError(f"no reply to report {report_id} from {thing}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def reports_stored(dsn: str) -> Dict[str, int]:
    """thing -> reports the engine applied (each report id once)."""
    return {t["thingName"]: t["reports"] for t in json.loads(cli(dsn, "things", "list", "--json").stdout)}
