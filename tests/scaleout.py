"""Real parts for the scale-out tests: a 3-node NATS JetStream cluster with MQTT listeners, and a
PostgreSQL server, each started from Debian's packages on loopback in a temporary directory."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from fixtures import free_port, wait_for, wait_for_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"),
             key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
# The MQTT layer's own session streams and consumers are replicated like the report stream
# (stream_replicas / consumer_replicas 3): with 2.9.10's defaults, MQTT QoS 1 publishes got no
# PUBACK for minutes after one node of three was killed (measured); with R3 they keep flowing.
# Device reports on `$aws/things/{thing}/defender/metrics/{fmt}` (MQTT) arrive in NATS as
# `$aws.things.{thing}.defender.metrics.{fmt}`; the mapping puts each thing in one partition.
REPORT_MAPPING = '"$aws.things.*.defender.metrics.*": "reports.{{partition(%d,1)}}.{{wildcard(1)}}.{{wildcard(2)}}"'


class NatsNode:
    def __init__(self, name: str, root: Path, cluster_ports: List[int], index: int, partitions: int):
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_port, self.mqtt_port, self.http_port = free_port(), free_port(), free_port()
        self.cluster_port = cluster_ports[index]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for i, p in enumerate(cluster_ports) if i != index)
        self.config = self.dir / "nats.conf"
        self.config.write_text(f"""
server_name: {name}
listen: 127.0.0.1:{self.client_port}
http: 127.0.0.1:{self.http_port}
jetstream {{ store_dir: "{self.dir / 'js'}" }}
cluster {{ name: garrison, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}
mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3, consumer_replicas: 3 }}
mappings = {{ {REPORT_MAPPING % partitions} }}
""")
        self.log = self.dir / "nats.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        """The node's monitoring endpoint (`http:`): /connz feeds the cloud-side metrics."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def start(self) -> "NatsNode":
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.config), "-l", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NatsCluster:
    """Three nats-server nodes in one cluster, JetStream on each, an MQTT listener on each."""

    def __init__(self, partitions: int = 4, nodes: int = 3, root: Optional[Path] = None):
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="garrison-nats-")
        self.root = Path(root or self._tmp.name)
        self.partitions = partitions
        cluster_ports = [free_port() for _ in range(nodes)]
        self.nodes = [NatsNode(f"n{i + 1}", self.root, cluster_ports, i, partitions) for i in range(nodes)]

    @property
    def urls(self) -> List[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for_port("127.0.0.1", node.mqtt_port, timeout)
        wait_for(self._jetstream_ready, timeout, "the JetStream meta leader")
        return self

    def _jetstream_ready(self) -> bool:
        import json
        import urllib.request
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/jsz", timeout=1) as resp:
                    info = json.load(resp)
            except OSError:
                return False
            if not (info.get("meta_cluster") or {}).get("leader"):
                return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._tmp:
            self._tmp.cleanup()


class Postgres:
    """A throwaway PostgreSQL cluster (initdb) on a free loopback port, owned by the `postgres` user
    (the server refuses to run as root). `dsn` reaches database `garrison` with trust auth."""

    def __init__(self, root: Optional[Path] = None):
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="garrison-pg-")
        self.root = Path(root or self._tmp.name)
        self.data = self.root / "data"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/garrison"

    def _as_postgres(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(prefix + list(argv), check=True, capture_output=True, text=True, **kwargs)

    def start(self) -> "Postgres":
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"), "-w",
                          "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
                          "start", timeout=60)
        self._as_postgres(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                          "garrison")
        return self

    def stop(self) -> None:
        try:
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", timeout=30)
        except (subprocess.CalledProcessError, FileNotFoundError):
            pass
        if self._tmp:
            self._tmp.cleanup()


class ProtocolTrace:
    """libpq's trace of what a PostgresStore's connection sends, while in the `with` block:
    `statements` (extended-protocol Bind messages plus simple Query messages) and `round_trips`,
    the times the client asked the server for answers and waited for them (a Flush, a Sync or a
    simple Query; those sent back to back count once). It counts what the client asks, not when
    the server's bytes happen to arrive, so it is the same on every run."""

    ASKS = ("Flush", "Sync", "Query")

    def __init__(self, store):
        self.store = store
        self.statements = self.round_trips = 0

    def __enter__(self) -> "ProtocolTrace":
        import psycopg
        self._file = tempfile.TemporaryFile("w+")
        pgconn = self.store._conn.pgconn
        pgconn.trace(self._file.fileno())
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
        return self

    def __exit__(self, *exc) -> None:
        self.store._conn.pgconn.untrace()  # flushes libpq's buffer into the file
        self._file.seek(0)
        sent = [line.split("\t")[2] for line in self._file.read().splitlines() if line.startswith("F\t")]
        self._file.close()
        self.statements = sum(1 for kind in sent if kind in ("Bind", "Query"))
        self.round_trips = sum(1 for i, kind in enumerate(sent)
                               if kind in self.ASKS and (i == 0 or sent[i - 1] not in self.ASKS))


if __name__ == "__main__":  # a smoke check by hand: python3 tests/scaleout.py
    cluster = NatsCluster().start()
    pg = Postgres().start()
    print("nats", cluster.urls, "mqtt", [n.mqtt_url for n in cluster.nodes], "pg", pg.dsn)
    time.sleep(1)
    pg.stop()
    cluster.stop()
