#!/usr/bin/env python3
"""A burst far above the steady rate into a running `garrison-detect serve`: throughput, memory,
and a reply to every report.

Steady state at AWS's pace is one report per thing per 300 s: 2,000 things make ~7 reports/s.
Here every thing sends REPORTS reports as fast as one paho publisher can (thousands per
second), through a real Mosquitto, into the real engine (SQLite, the 10-behavior example
profile attached to all things). Measured in the same run:

- baseline: Mosquitto relaying the same payload QoS 1 from a paho publisher to a paho
  subscriber (bench_ingest.bench_broker), the ceiling any consumer of this broker sees;
- the engine's throughput: reports from the first publish to the last reply;
- the engine's RSS at idle (connected, nothing to do) and its peak during the burst, sampled
  every 20 ms; two burst sizes, so one sees whether memory grows with the burst (it must not:
  the engine holds at most a bounded queue and leaves the rest with the broker);
- every report answered (accepted), none twice.

    python3 bench/bench_burst.py [--things 2000] [--reports 10] [--small-reports 2] [--record docs/bench-burst.md]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402

from garrison.agent import report as wire  # noqa: E402
from bench_ingest import bench_broker, typical_report  # noqa: E402
from engine_stream import Engine, Publisher, Replies, cli  # noqa: E402
from fixtures import Mosquitto  # noqa: E402

PROFILE = ROOT / "detect" / "ops" / "examples" / "aws-rule-based.json"


class PeakRss:
    """Samples a process's RSS every `every_s` in a thread; `.peak` in bytes."""

    def __init__(self, pid: int, every_s: float = 0.02):
        self.process, self.every_s = psutil.Process(pid), every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def idle_rss(pid: int, seconds: float = 1.0) -> int:
    process, samples = psutil.Process(pid), []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(process.memory_info().rss)
        time.sleep(0.05)
    return max(samples)


HISTORY = """## What changed, before and after

Issue 12's third pass, 2026-11-30: the write-ahead log is copied back into the database by a
thread of `serve` with its own connection (detect/state/checkpoint.py), no longer inside the
ingest worker's COMMIT every 1,000 pages. Three pairs of runs, alternating with the code before
(395aa3f) on a quiet machine: big burst 2,049 against 1,871 answered/s on average (+9%), the same
burst again 1,667 against 1,670. Runs of the same code spread wider than that (1,649-2,327), so
this is not a measured gain in throughput; it is kept because a batch's commit no longer waits
for a checkpoint's copy and sync. This run also counts the CPU of the bench's own clients and
of the broker, and from it what the engine would have per report at 0.6×.

Issue 12's second pass, 2026-11-30, on a quiet machine (load average about 1), the same command
run back to back against the engine as it stood before (commit 489fe41, every feature of issues
10-18 merged) and after, each with its own relay baseline:

| engine | relay /s | small: answered /s (vs relay) | big: answered /s (vs relay) | big again | engine CPU µs/report (small, big, again) |
|---|---|---|---|---|---|
| before (489fe41) | 6,391 | 942 (0.15×) | 1,425 (0.22×) | 1,331 (0.21×) | 1,025, 678, 694 |
| after | 6,426 | 1,129 (0.18×) | 1,762 (0.27×) | 1,739 (0.27×) | 808, 505, 513 |

Profiled first (py-spy of `serve` under this burst, cProfile of Ingestor.handle_batch in-process):
the stdlib JSON encoder (the console's latest report, every state and violation value) was a
sixth of the worker's time, validation a fifth, SQLite statements a fifth, and the destination
list of a gateway's report was built twice. What changed: the store's JSON columns and the
latest report go through orjson; the latest report and the metric-history rows are written once
per batch (`executemany`); behaviors and the history share one extraction per metric; a
well-formed list entry is checked by a function compiled per key order from the schema (the
generic check remains the fallback and words every error); endpoints map to addresses through a
bounded memo; the batch's things are read at once at its start (prefetch). In-process, the front
door and engine went from 470 to 326 µs of CPU per report. Tried and taken out again: keeping
things' states cached from one batch to the next saved 4% of the CPU but cost 7 KB per thing
(+20 MiB of peak RSS for 2,000 things).

The 0.6× target of issue 12 is not met: 0.26-0.34× on the big bursts. The run's own CPU
accounting (above, "What 0.6× would take") says why tuning cannot close the gap on this 2-core
machine. In two runs of this version, one engine process had 240-280 µs of CPU per report at
0.6× of the relay, and several processes 300-365 µs in all (what the bench's publisher and
subscriber and the broker leave of the two cores), before any cost of passing reports between
them; the engine spent 440-525. Per thread (psutil, once, during this bench): the ingest worker
444 µs per report, paho's network thread 59, the checkpointer 12. MQTT is not the problem: a paho
subscriber doing nothing else costs 39 µs per message, 50 with a reply. The worker is: the front
door and engine alone, in-process without MQTT (bench/bench_batch_store.py), cost 280 µs per
report with 200 things and 370 with 2,000 things whose windows hold a dozen samples, as here.
So one process would need the worker's work cut by half; by py-spy of `serve` under this burst it
is reading the batch's things and their states (a sixth), validation and JSON decoding (a
quarter), writing and committing (a quarter), and rule evaluation (a tenth), with no part large
enough to halve it. A compiled decoder and schema check (msgspec, measured once on this report:
9 µs against 67 for json.loads and the validator) would take a sixth. Past this, the way to more
reports per second is more cores and more processes: the NATS JetStream workers (docs/scale-out.md).

Group commit itself (issue 12's first pass, 2026-11-29, on a shared machine at load average 6-10):
790 µs of engine CPU per report before (one transaction per report), about 520 after (group
commit, profiles and attachments cached while `PRAGMA data_version` says nobody wrote, only
changed states written, validation inlined). The batch size matters more than any of it: the
broker sends at most `max_inflight_messages` reports the engine has not acknowledged, and with a
batch as large as that window (100) the broker idled while the engine judged: half the rate of
batches of 20. The features merged next (metric history, the console's latest report, posture and
socket owners on every report) took it back to 660-920 µs before this pass."""


class CpuSplit:
    """CPU seconds (user + system) each process spent since this was made: `clients` is this one
    (the publisher and the replies' subscriber), the others are named by the caller."""

    def __init__(self, **pids: int):
        self.processes = {"clients": psutil.Process(), **{who: psutil.Process(pid) for who, pid in pids.items()}}
        self.before = self._now()

    def _now(self):
        return {who: sum(p.cpu_times()[:2]) for who, p in self.processes.items()}

    def spent(self):
        now = self._now()
        return {who: now[who] - self.before[who] for who in now}


def spare_us(relay: float, clients_us: float, broker_us: float, target: float = 0.6) -> float:
    """The CPU per report the machine's cores leave an engine at `target` × the relay rate, after
    what the bench's clients and the broker spend per report."""
    rate = target * relay
    return 1e6 * ((os.cpu_count() or 1) - rate * (clients_us + broker_us) / 1e6) / rate


def burst(broker, engine, things, reports, first_id):
    """Publish things x reports reports at full speed; wait for every reply."""
    plan = [(f"burst-{t:05d}", first_id + i, wire.encode(typical_report(first_id + i), "json"))
            for i in range(reports) for t in range(things)]
    replies = Replies(broker.host, broker.port)
    cpu = CpuSplit(engine=engine.pid, broker=broker.proc.pid)
    engine_peak = PeakRss(engine.pid)
    broker_peak = PeakRss(broker.proc.pid)
    with engine_peak, broker_peak:
        publisher = Publisher(broker.host, broker.port, plan).start()
        publisher.join(600)
        published_s = publisher.finished - publisher.started
        deadline = time.monotonic() + 600
        while replies.answered() < len(plan) and time.monotonic() < deadline:
            time.sleep(0.02)
        done_s = time.monotonic() - publisher.started
    spent = cpu.spent()
    publisher.close()
    replies.close()
    statuses = [s for key, s in replies.by_report.items()]
    return {
        "reports": len(plan),
        "publish_rate": len(plan) / published_s,
        "engine_rate": replies.answered() / done_s,
        "answered": replies.answered(),
        "accepted": sum(1 for s in statuses if s == ["ACCEPTED"]),
        "more_than_one_reply": sum(1 for s in statuses if len(s) > 1),
        "engine_peak": engine_peak.peak,
        "broker_peak": broker_peak.peak,
        "seconds": done_s,
        # CPU spent per report: what the engine costs, whatever the machine's load; and what the
        # bench's own clients (publisher, replies) and the broker took from the same cores
        **{f"{who}_cpu_us": seconds * 1e6 / len(plan) for who, seconds in spent.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=2000)
    parser.add_argument("--reports", type=int, default=10, help="reports per thing in the big burst")
    parser.add_argument("--small-reports", type=int, default=2, help="reports per thing in the small burst")
    parser.add_argument("--record", default=str(ROOT / "docs" / "bench-burst.md"), help="write the results here "
                        "('' to only print)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="garrison-burst-"))
    # as `garrison-detect broker-config` writes it: the broker sends the engine at most 100
    # reports it has not acknowledged (Mosquitto's default is 20)
    broker = Mosquitto(workdir / "broker", extra_config="max_inflight_messages 100").start()
    engine = Engine(workdir, broker.url)
    try:
        payload = wire.encode(typical_report(), "json")
        relay_messages = min(20000, args.things * args.reports)
        relay_cpu = CpuSplit(broker=broker.proc.pid)
        relay, relay_complete = bench_broker(broker, payload, 1, relay_messages)
        relay_us = {who: seconds * 1e6 / relay_messages for who, seconds in relay_cpu.spent().items()}
        cli(engine.db, "profiles", "apply", str(PROFILE), "--attach", "all")
        engine.start()
        time.sleep(1.0)  # let start-up allocations settle
        idle = idle_rss(engine.pid)
        small = burst(broker, engine, args.things, args.small_reports, 1000)
        big = burst(broker, engine, args.things, args.reports, 1000 + args.small_reports)
        again = burst(broker, engine, args.things, args.reports, 1000 + args.small_reports + args.reports)
        after = idle_rss(engine.pid)
        things = json.loads(cli(engine.db, "things", "list", "--json"))
        stored = sum(t["reports"] for t in things)
    finally:
        engine.stop()
        broker.stop()

    mib = 2 ** 20
    rows = []
    runs = (("small", small), ("big", big), ("big again", again))
    for name, r in runs:
        rows.append(f"| {name}: {args.things:,} things × {r['reports'] // args.things} | {r['reports']:,} | "
                    f"{r['publish_rate']:,.0f} | {r['engine_rate']:,.0f} | {r['engine_rate'] / relay:.2f}× | "
                    f"{r['engine_cpu_us']:,.0f} | {r['clients_cpu_us']:,.0f} | {r['broker_cpu_us']:,.0f} | "
                    f"{r['answered']:,} ({r['accepted']:,} accepted, {r['more_than_one_reply']} twice) | "
                    f"{idle / mib:.1f} → {r['engine_peak'] / mib:.1f} (+{(r['engine_peak'] - idle) / mib:.1f}) | "
                    f"{r['broker_peak'] / mib:.1f} |")
    total = sum(r["reports"] for _, r in runs)
    load = os.getloadavg()[0]
    text = "\n".join([
        "# Burst benchmark",
        "",
        f"`python3 bench/bench_burst.py --things {args.things} --reports {args.reports} --small-reports "
        f"{args.small_reports}` on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d', time.gmtime())}, load average {load:.1f} at the end "
        "(a shared machine: compare the ratios).",
        "",
        "A real Mosquitto (`max_inflight_messages 100`, as `garrison-detect broker-config` writes it) and "
        "`garrison-detect serve` (SQLite, `detect/ops/examples/aws-rule-based.json` "
        "attached to all things, `--min-report-interval 0`), fed by one paho publisher at full speed "
        f"(QoS 1) with gateway-sized JSON reports ({len(payload):,} bytes). Steady state for "
        f"{args.things:,} things at one report per 300 s is {args.things / 300:.0f} reports/s.",
        "",
        f"Baseline, same run: Mosquitto relays this payload QoS 1 at **{relay:,.0f} messages/s** "
        f"(paho → Mosquitto → paho{'' if relay_complete else ', incomplete'}).",
        "",
        "| burst | reports | published /s | engine: answered /s | vs relay | CPU µs/report: engine | bench's "
        "clients | broker | replies | engine RSS MiB idle → peak | broker peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"**What 0.6× would take on this machine.** The relay's two paho clients (one process) spent "
        f"{relay_us['clients']:,.0f} µs of CPU per message and the broker {relay_us['broker']:,.0f}. "
        f"0.6× of the relay is {0.6 * relay:,.0f} reports/s: one engine process (one core, the GIL) "
        f"would have {1e6 / (0.6 * relay):,.0f} µs of CPU per report. Several engine processes would "
        f"share what the bench's clients and the broker leave of the {os.cpu_count()} cores at that rate "
        f"(they spent {big['clients_cpu_us']:,.0f} + {big['broker_cpu_us']:,.0f} µs per report in the big "
        f"burst): **{spare_us(relay, big['clients_cpu_us'], big['broker_cpu_us']):,.0f} µs per report** in all "
        f"of them together. The engine spent {big['engine_cpu_us']:,.0f}.",
        "",
        f"After the bursts the engine is at {after / mib:.1f} MiB; the database holds {stored:,} reports "
        f"for {len(things):,} things (sent: {total:,}).",
        "",
        "What bounds the engine's memory: one worker takes reports from a queue of 100; when it is "
        "full paho's network thread waits, TCP fills, and Mosquitto keeps the backlog in the engine's "
        "persistent session (bounded by `max_queued_messages`, docs/security.md). The worker judges "
        "what is queued in batches of up to 20 reports, one SQLite transaction each (group commit); "
        "replies and broker acknowledgements follow the commit, so a report is acknowledged only "
        "after it is stored, and none is lost or answered twice.",
        "",
        HISTORY,
        "",
        f"Peak growth by burst size: +{(small['engine_peak'] - idle) / mib:.1f} MiB for "
        f"{small['reports']:,} reports, +{(big['engine_peak'] - idle) / mib:.1f} MiB for {big['reports']:,}, "
        f"+{(again['engine_peak'] - idle) / mib:.1f} MiB for the same burst again: flat, because replies "
        "go at QoS 0. With QoS 1 replies (before 2026-11-25) the peak grew with the burst, +42 MiB for "
        "20,000 reports: paho kept each reply until the broker's PUBACK for it was read, by a network "
        "thread busy holding the broker back (9,853 replies waiting at the peak of a 10,000-report burst).",
        "",
    ])
    print(text)
    if args.record:
        Path(args.record).write_text(text)
        print(f"(recorded in {args.record})")
    ok = all(r["answered"] == r["reports"] for r in (small, big)) and stored == total
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
