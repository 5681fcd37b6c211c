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

The 0.6× target of issue 12 is still not met: 0.26-0.32× on the big bursts. At the relay's 6,400 messages/s it
needs about 240 µs of engine CPU per report, paho's network thread included, on the one core a
Python process can use; the engine spends about 500. What is left per report, by the same
profile: validation and JSON decoding (a quarter), the SQLite statements and commit (a fifth),
rule evaluation, and paho's Python per message (receive, PUBACK, reply). Past this, the way to
more reports per second is more processes: the NATS JetStream workers (docs/scale-out.md).

Group commit itself (issue 12's first pass, 2026-11-29, on a shared machine at load average 6-10):
790 µs of engine CPU per report before (one transaction per report), about 520 after (group
commit, profiles and attachments cached while `PRAGMA data_version` says nobody wrote, only
changed states written, validation inlined). The batch size matters more than any of it: the
broker sends at most `max_inflight_messages` reports the engine has not acknowledged, and with a
batch as large as that window (100) the broker idled while the engine judged: half the rate of
batches of 20. The features merged next (metric history, the console's latest report, posture and
socket owners on every report) took it back to 660-920 µs before this pass."""


def burst(broker, engine, things, reports, first_id):
    """Publish things x reports reports at full speed; wait for every reply."""
    plan = [(f"burst-{t:05d}", first_id + i, wire.encode(typical_report(first_id + i), "json"))
            for i in range(reports) for t in range(things)]
    replies = Replies(broker.host, broker.port)
    cpu_before = psutil.Process(engine.pid).cpu_times()
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
    cpu_after = psutil.Process(engine.pid).cpu_times()
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
        # CPU the engine spent per report: what the engine costs, whatever the machine's load
        "cpu_us": ((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)) * 1e6 / len(plan),
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
        relay, relay_complete = bench_broker(broker, payload, 1, min(20000, args.things * args.reports))
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
                    f"{r['cpu_us']:,.0f} | "
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
        "| burst | reports | published /s | engine: answered /s | vs relay | engine CPU µs/report | replies | "
        "engine RSS MiB idle → peak | broker peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
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
