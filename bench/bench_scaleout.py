#!/usr/bin/env python3
"""The scale-out deployment under load: 1 and 2 `garrison-detect serve --nats` workers on a
3-node NATS JetStream cluster (R3 stream, 4 partitions) and PostgreSQL, all on this machine.

Measured in one run:
- baseline: nats-server's MQTT listener relaying the same payload at QoS 1 from one paho
  publisher to one paho subscriber (bench_ingest.bench_broker), the ceiling of this broker here;
- per worker count, a burst: THINGS things x REPORTS reports (gateway-sized, the 10-behavior
  example profile attached to all) published as fast as one paho publisher can, QoS 1, to one
  node's MQTT listener; throughput = reports answered / time from the first publish to the last
  first reply; end-to-end latency = publish -> first reply at the device, per report (p50/p95/p99);
- per worker count, a paced run at RATE reports/s (below capacity): latency when nothing queues;
- every report answered ACCEPTED and applied exactly once (the database's per-thing count);
- CPU seconds per 1,000 reports of the burst, per component (workers, nats-server x3,
  PostgreSQL): on a machine this small the parts compete for the same two cores, so the
  throughput is a floor; the CPU cost is what projects to a larger deployment (docs/scale-out.md).

    python3 bench/bench_scaleout.py [--things 500] [--reports 4] [--rate 100] [--record docs/bench-scaleout.md]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "tests", "tests/scaleout", "tests/detect", "bench"):
    sys.path.insert(0, str(ROOT / sub))

import psutil  # noqa: E402
import psycopg  # noqa: E402

from garrison.agent import report as wire  # noqa: E402
from bench_ingest import bench_broker, typical_report  # noqa: E402
from fixtures import wait_for  # noqa: E402
from scaleout import NatsCluster, Postgres  # noqa: E402
from world import Device, Worker, cli, owners, reports_stored  # noqa: E402

PROFILE = ROOT / "detect" / "ops" / "examples" / "aws-rule-based.json"
PARTITIONS = 4


class _Node:
    def __init__(self, port):
        self.host, self.port = "127.0.0.1", port


def _database(server: Postgres, name: str) -> str:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


def _plan(things: int, reports: int, tag: str):
    base = int(time.time() * 1000) - 60_000  # within the front door's grace for a new thing's first report
    plan = []
    for n in range(reports):
        for t in range(things):
            report_id = base + n
            plan.append((f"{tag}-{t}", report_id, wire.encode(typical_report(report_id), "json")))
    return plan


def _percentiles(values):
    values = sorted(values)
    if not values:
        return None, None, None
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return pick(0.50), pick(0.95), pick(0.99)


def _cpu(processes):
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + getattr(times, "children_user", 0) + getattr(times, "children_system", 0)
        except psutil.Error:
            pass
    return total


def _components(cluster, workers):
    """psutil processes per component: workers, nats-server nodes, the PostgreSQL server."""
    postgres = [p for p in psutil.process_iter(["name", "username"]) if p.info["name"] == "postgres"]
    return {"workers": [psutil.Process(w.proc.pid) for w in workers],
            "nats": [psutil.Process(n.proc.pid) for n in cluster.nodes],
            "postgres": postgres}


def run_load(cluster, dsn, workers, plan, rate=None, timeout=300):
    """Publish `plan` (paced at `rate`/s, else as fast as possible); wait for every reply."""
    device = Device("127.0.0.1", cluster.nodes[1].mqtt_port, name="bench-replies")
    publisher = Device("127.0.0.1", cluster.nodes[0].mqtt_port, name="bench-publisher", inflight=1000,
                       subscribe=False)
    sent = {}
    components = _components(cluster, workers)
    cpu_before = {name: _cpu(procs) for name, procs in components.items()}
    try:
        start = time.monotonic()
        for i, (thing, report_id, payload) in enumerate(plan):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sent[(thing, report_id)] = time.monotonic()
            publisher.publish(thing, payload)
        wait_for(lambda: device.answered() >= len(plan), timeout, "every report answered", step=0.2)
        with device.lock:
            replies = dict(device.first_reply)
            statuses = {s for answers in device.by_report.values() for s in answers}
    finally:
        device.close()
        publisher.close()
    elapsed = max(replies.values()) - start
    latencies = [(replies[key] - t) * 1000 for key, t in sent.items() if key in replies]
    cpu = {name: (_cpu(procs) - cpu_before[name]) * 1000 / len(plan) for name, procs in components.items()}
    return {"rate": len(plan) / elapsed, "latency_ms": _percentiles(latencies), "statuses": sorted(statuses),
            "elapsed": elapsed, "cpu_s_per_1000": cpu}


def bench_workers(cluster, pg, count, things, reports, rate, workdir):
    dsn = _database(pg, f"bench{count}")
    cli(dsn, "profiles", "apply", str(PROFILE), "--attach", "all")
    workers = [Worker(workdir, cluster.urls, dsn, index=i, workers=count, partitions=PARTITIONS,
                      ) for i in range(count)]
    try:
        for worker in workers:
            worker.start()
        wait_for(lambda: len(owners(dsn)) == PARTITIONS, 30, "all partitions owned")
        burst = run_load(cluster, dsn, workers, _plan(things, reports, f"b{count}"))
        paced = run_load(cluster, dsn, workers, _plan(things, 1, f"p{count}"), rate=rate)
        stored = reports_stored(dsn)
        exact = (all(stored[f"b{count}-{t}"] == reports for t in range(things))
                 and all(stored[f"p{count}-{t}"] == 1 for t in range(things)))
    finally:
        for worker in workers:
            worker.stop()
    return {"workers": count, "burst": burst, "paced": paced, "exactly_once": exact}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--things", type=int, default=500)
    parser.add_argument("--reports", type=int, default=4, help="reports per thing in the burst")
    parser.add_argument("--rate", type=float, default=100, help="reports/s of the paced run")
    parser.add_argument("--relay-messages", type=int, default=5000)
    parser.add_argument("--record", help="write the results to this markdown file")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="garrison-bench-scaleout-"))
    load_before = os.getloadavg()[0]
    cluster, pg = NatsCluster(partitions=PARTITIONS, root=workdir / "nats"), Postgres()
    try:
        cluster.start()
        pg.start()
        payload = wire.encode(typical_report(), "json")
        relay, finished = bench_broker(_Node(cluster.nodes[0].mqtt_port), payload, 1, args.relay_messages)
        results = [bench_workers(cluster, pg, n, args.things, args.reports, args.rate, workdir) for n in (1, 2)]
    finally:
        pg.stop()
        cluster.stop()
    lines = [
        "# Scale-out benchmark: NATS JetStream + PostgreSQL workers",
        "",
        f"`python3 bench/bench_scaleout.py --things {args.things} --reports {args.reports} --rate {args.rate:g}` on "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f} before the run; "
        f"nats-server {_nats_version()} (3 nodes, R3 stream, {PARTITIONS} partitions), PostgreSQL {_pg_version()}, "
        "all on this one machine (fsync off for PostgreSQL, as in the tests), the 10-behavior example profile, "
        f"gateway-sized reports ({len(payload)} bytes).",
        "",
        f"Baseline, nats-server's MQTT relay at QoS 1 (paho -> NATS -> paho, {args.relay_messages} messages): "
        f"**{relay:,.0f} msg/s**{'' if finished else ' (not all delivered)'}.",
        "",
        "| workers | burst reports/s | x relay | burst latency p50 / p95 / p99 ms | paced at | paced latency "
        "p50 / p95 / p99 ms | answers | applied exactly once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    body = []
    for r in results:
        b, p = r["burst"], r["paced"]
        lines.append(f"| {r['workers']} | {b['rate']:,.0f} | {b['rate'] / relay:.2f} | "
                     f"{' / '.join(f'{v:,.0f}' for v in b['latency_ms'])} | {args.rate:g}/s | "
                     f"{' / '.join(f'{v:,.0f}' for v in p['latency_ms'])} | "
                     f"{', '.join(sorted(set(b['statuses']) | set(p['statuses'])))} | {r['exactly_once']} |")
        cpu = b["cpu_s_per_1000"]
        body.append(f"| {r['workers']} | {cpu['workers']:.1f} | {cpu['nats']:.1f} | {cpu['postgres']:.1f} | "
                    f"{sum(cpu.values()):.1f} |")
    lines += ["", "CPU seconds per 1,000 reports of the burst (all processes of each component):", "",
              "| workers | workers | nats-server x3 | PostgreSQL | total |", "|---|---|---|---|---|"] + body
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(results, indent=1))
    if args.record:
        Path(args.record).write_text(text)
    return 0


def _nats_version():
    import subprocess
    from scaleout import NATS_SERVER
    return subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout.strip().split()[-1]


def _pg_version():
    from scaleout import PG_BIN
    return PG_BIN.parent.name


if __name__ == "__main__":
    sys.exit(main())
