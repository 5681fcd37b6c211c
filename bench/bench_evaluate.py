#!/usr/bin/env python3
"""Reports per second per core through decode -> validate -> evaluate, beside the broker's relay rate.

Every stage runs on one thread, so its rate is per core; CPU seconds (process_time) are the
divisor, which keeps the numbers honest on a shared, busy machine (wall-clock rates are printed
too). The baseline measured in the same run is Mosquitto relaying the same payloads from a paho
publisher to a paho subscriber on loopback: the engine should keep up with its broker.

Workload: 1,000 things, realistic reports (5 TCP + 3 UDP listening ports, 12 established
connections: 11 to a fleet-wide pool of 500 servers, 1 to a never-seen address; network stats,
a custom metric) in short names as the agent sends them, the
10-behavior rule profile detect/ops/examples/aws-rule-based.json, one evaluation state per
(thing, behavior) kept in memory as the engine keeps it (JSON-able dicts). (Statistical
thresholds are recomputed by the engine from its store once a minute, not per report, so they
are not on this per-report path: bench/bench_engine.py measures the engine with its store.)

Usage: python3 bench/bench_evaluate.py [--things 1000] [--reports 20000] [--relay 20000]
       [--record docs/bench-evaluate.md]
"""
import argparse
import gc
import os
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from garrison.agent import report  # noqa: E402
from garrison.wire import schema  # noqa: E402
from garrison.collectors.base import Connection, ListeningSocket  # noqa: E402
from garrison.detect.judge import evaluate  # noqa: E402
from garrison.detect.judge.profiles import load_profile  # noqa: E402

try:
    from garrison.detect.ingest.validate import validate as _validate
    VALIDATOR = "garrison.detect.ingest.validate.validate"
except ImportError:  # H3's validator not there yet: name normalisation only
    _validate = schema.to_long
    VALIDATOR = "garrison.wire.schema.to_long (garrison.detect.ingest.validate missing: no validation measured)"

BUDGET = 20_000  # reports/s/core for evaluation
EXAMPLES = ROOT / "detect" / "ops" / "examples"
T0 = 1_700_000_000_000


def make_payloads(things: int, per_thing: int, seed: int = 1):
    """[(thing, payload bytes)], `per_thing` successive reports per thing, 5 minutes apart."""
    rng = random.Random(seed)
    # Devices talk mostly to the fleet's own servers (brokers, NTP, updates, CDNs): a pool of 500
    # endpoints, plus one peer never seen before in every report (the worst case for caches).
    pool = [f"{rng.choice(('10.1', '52.94', '203.0'))}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            for _ in range(500)]
    out = []
    for t in range(things):
        thing = f"sensor-{t:05d}"
        tcp = [ListeningSocket("tcp", 4, "0.0.0.0", p) for p in (22, 443, 8883, 1883, rng.choice((80, 8080, 4444)))]
        udp = [ListeningSocket("udp", 4, "0.0.0.0", p) for p in (53, 123, 5353)]
        for r in range(per_thing):
            peers = rng.sample(pool, 11) + [f"100.{rng.randrange(64, 128)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"]
            conns = [Connection(4, "10.0.0.2", 40000 + i, peer, rng.choice((443, 8883)), interface="eth0")
                     for i, peer in enumerate(peers)]
            doc = report.build(T0 + r * 300_000, listening_tcp=tcp, listening_udp=udp, connections=conns,
                               network_stats={"bytes_in": rng.randrange(10**7), "bytes_out": rng.randrange(10**7),
                                              "packets_in": rng.randrange(10**5), "packets_out": rng.randrange(10**5)},
                               custom_metrics={"cpu_usage": rng.uniform(0, 100)})
            out.append((thing, T0 + r * 300_000, report.encode(doc, "json", short_names=True)))
    out.sort(key=lambda item: item[1])  # the fleet reports in time order
    return out


REPEATS = 3


def timed(fn, n):
    """(reports/s per CPU-second, reports/s wall), best of REPEATS runs as timeit does: on a shared
    machine the slower runs measure the neighbours."""
    # The prepared inputs (tens of thousands of decoded reports) would make every full garbage
    # collection walk them; the engine sees one report at a time, so keep them out of the GC.
    gc.collect()
    gc.freeze()
    best_cpu = best_wall = float("inf")
    for _ in range(REPEATS):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    gc.unfreeze()
    return n / max(best_cpu, 1e-9), n / max(best_wall, 1e-9)


def evaluator(profile):
    """A closure evaluating a validated report for a thing against `profile`, states in memory."""
    states = {}
    behaviors = [(b, b.spec, b.spec.extract) for b in profile.behaviors]

    def run(thing, report_long, received_ms):
        transitions = 0
        for behavior, spec, extract in behaviors:
            key = (thing, behavior.name)
            out = evaluate.step(behavior, states.get(key), extract(report_long), received_ms)
            states[key] = out.state
            if out.transition:
                transitions += 1
                evaluate.violation_value(spec, out.value)
        return transitions
    return run, states


def bench_pipeline(payloads, profile_path):
    profile = load_profile(profile_path)
    decoded = [(thing, ts, report.decode(p, "json")) for thing, ts, p in payloads]
    validated = [(thing, ts, _validate(doc)) for thing, ts, doc in decoded]
    n = len(payloads)
    rates = {}
    rates["decode"] = timed(lambda: [report.decode(p, "json") for _, _, p in payloads], n)
    rates["validate"] = timed(lambda: [_validate(d) for _, _, d in decoded], n)
    # Repeats replay the same reports against the states the previous run left: the alarms stay
    # as they were, as after an engine restart.
    run, _ = evaluator(profile)
    rates["evaluate"] = timed(lambda: [run(thing, doc, ts) for thing, ts, doc in validated], n)
    run, states = evaluator(profile)
    rates["pipeline"] = timed(lambda: [run(thing, _validate(report.decode(p, "json")), ts)
                                       for thing, ts, p in payloads], n)
    json.dumps([[list(k), v] for k, v in list(states.items())[:100]])  # states stay JSON
    return len(profile.behaviors), rates, len(states)


def bench_relay(count, payload):
    """Messages/s Mosquitto relays from a paho publisher to a paho subscriber (QoS 0, loopback),
    best of REPEATS runs, and whether that run delivered every message."""
    from bench_ingest import bench_broker
    from fixtures import Mosquitto

    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        try:
            runs = []
            for _ in range(REPEATS):
                runs.append(bench_broker(broker, payload, 0, count))
                time.sleep(0.5)  # stragglers of a short run must not count in the next
        finally:
            broker.stop()
    return max(runs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=20000, help="reports evaluated per stage")
    parser.add_argument("--relay", type=int, default=20000, help="messages relayed through Mosquitto")
    parser.add_argument("--record", help="write the results as Markdown to this file")
    args = parser.parse_args(argv)

    per_thing = max(1, args.reports // args.things)
    payloads = make_payloads(args.things, per_thing)
    size = sum(len(p) for _, _, p in payloads) // len(payloads)
    print(f"{len(payloads)} reports from {args.things} things, {size} bytes each on average (JSON, short names); "
          f"best of {REPEATS} runs per stage")
    print(f"validator: {VALIDATOR}")

    rows = []
    for label, path in (("rules", EXAMPLES / "aws-rule-based.json"),):
        behaviors, rates, states = bench_pipeline(payloads, path)
        rows.append((label, behaviors, rates))
        print(f"\nprofile {path.name}: {behaviors} behaviors, {states} evaluation states in memory")
        for stage, (cpu_rate, wall_rate) in rates.items():
            print(f"  {stage:<9} {cpu_rate:>10,.0f} reports/s per core (CPU)   {wall_rate:>10,.0f} wall")

    relay_rate, relay_complete = bench_relay(args.relay, payloads[0][2])
    print(f"\nMosquitto relay (paho pub -> broker -> paho sub, QoS 0, {size}-byte payloads): "
          f"{relay_rate:,.0f} msg/s ({args.relay} messages{'' if relay_complete else ', some lost'})")
    rules_eval = rows[0][2]["evaluate"][0]
    rules_pipe = rows[0][2]["pipeline"][0]
    verdict = "meets" if rules_eval >= BUDGET else "MISSES"
    print(f"\nevaluation (rules): {rules_eval:,.0f} reports/s/core {verdict} the {BUDGET:,} budget; "
          f"full pipeline {rules_pipe:,.0f}/s/core = {rules_pipe / relay_rate:.2f}x the broker's relay rate")

    if args.record:
        lines = [
            "# Detect evaluation benchmark",
            "",
            "Produced by `python3 bench/bench_evaluate.py --record docs/bench-evaluate.md` "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python {platform.python_version()}, "
            f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end).",
            "",
            f"Workload: {len(payloads)} reports from {args.things} things, {size} bytes each (JSON, short names: "
            "5 TCP + 3 UDP listening ports, 12 connections (11 to a fleet-wide pool of 500 servers, 1 to a "
            "never-seen address), network stats, one custom metric); states kept "
            f"in memory per (thing, behavior). Validator: {VALIDATOR}. Rates are reports per CPU-second of "
            f"one thread, best of {REPEATS} runs (wall-clock rates beside them); the machine is shared, so "
            "compare ratios.",
            "",
            "| profile | behaviors | stage | reports/s/core (CPU) | reports/s (wall) |",
            "|---|---|---|---|---|",
        ]
        for label, behaviors, rates in rows:
            for stage, (cpu_rate, wall_rate) in rates.items():
                lines.append(f"| {label} | {behaviors} | {stage} | {cpu_rate:,.0f} | {wall_rate:,.0f} |")
        lines += [
            "",
            "Stages: `decode` = garrison.agent.report.decode; `validate` = the validator on decoded reports; "
            "`evaluate` = metric extraction + garrison.detect.judge.evaluate.step for every behavior; "
            "`pipeline` = all three per report.",
            "",
            f"Baseline in the same run: Mosquitto relays {relay_rate:,.0f} msg/s (best of {REPEATS}) of the same "
            "payload from a paho publisher to a paho subscriber on loopback (QoS 0). That rate is bounded by the Python MQTT client "
            "as much as by the broker, and is what the engine's own paho subscriber could receive on this machine.",
            "",
            f"Budget: evaluation ≥ {BUDGET:,} reports/s/core. Rules profile: {rules_eval:,.0f} ({verdict}). "
            f"Full pipeline: {rules_pipe:,.0f} reports/s/core, {rules_pipe / relay_rate:.2f}× the broker's relay rate.",
            "",
            "Reading it: one core evaluates the 10-behavior profile for a fleet of 1,000 devices reporting every "
            "300 s (3.3 reports/s) with four orders of magnitude to spare; decoding and validation cost as much "
            "as evaluation, so a single engine process is bounded by the broker relay and the pipeline, and "
            "more throughput comes from more workers partitioned by thing.",
            "",
        ]
        Path(args.record).write_text("\n".join(lines))
        print(f"recorded in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
