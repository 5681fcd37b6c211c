#!/usr/bin/env python3
"""A worker's own cost per report, in one process: the front door and the engine's group commit
(Ingestor.handle_batch -> Engine.batch, what `garrison-detect serve` runs per fetched batch) on a
SQLite file and on PostgreSQL, without the broker.

Per backend and batch size: CPU milliseconds per report (process_time of this process: the
front door, the engine and the database client; the server's CPU is not in it), and on
PostgreSQL the round trips per report (the times the client asked the server for answers and
waited) and statements per report, both counted in libpq's protocol trace (tests/scaleout.py
ProtocolTrace). Workload: THINGS things, ROUNDS reports each (gateway-sized, with the posture
metrics the agent sends by default), the 10-behavior example profile attached to all; the
first 2 rounds (registration, alarms raised) are not measured. Best of REPEATS runs.

    python3 bench/bench_batch_store.py [--things 200] [--rounds 6] [--repeats 3] [--code DIR]

--code DIR measures another checkout's detect package (e.g. `git worktree add /tmp/before
HEAD~1`), for before/after numbers on the same machine in the same hour.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "tests", "bench"):
    sys.path.insert(0, str(ROOT / sub))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--code", help="a checkout whose detect/ to measure instead of this one's")
    args = parser.parse_args(argv)
    if args.rounds < 3:  # rounds + 1 in all: two to warm up, the last one traced, the rest measured
        parser.error("--rounds must be at least 3")
    if args.code:
        import garrison.detect
        garrison.detect.__path__ = [str(Path(args.code) / "detect")]

    import psycopg
    from garrison.agent import report as wire
    from garrison.wire.topics import report_topic
    from garrison.detect.engine import Engine
    from garrison.detect.ingest.frontdoor import Ingestor
    from garrison.detect.state.store import Store
    from bench_ingest import typical_report
    from scaleout import PG_BIN, Postgres, ProtocolTrace

    profile = ROOT / "detect" / "ops" / "examples" / "aws-rule-based.json"
    posture = {"posture:ssh_permit_root_login": [{"number": 1}],
               "posture:insecure_services": [{"string_list": ["telnet:23/tcp"]}],
               "posture:sysctl_unhardened": [{"string_list": []}]}
    base = int(time.time() * 1000) - (args.rounds + 1) * 300_000

    def rounds():
        """args.rounds rounds of reports, then one more (traced on PostgreSQL)."""
        out = []
        for r in range(args.rounds + 1):
            doc = typical_report(base + r * 300_000)
            doc["custom_metrics"] = dict(doc["custom_metrics"], **posture)
            payload = wire.encode(doc, "json")
            out.append([(report_topic(f"gw{t}", "json"), payload, base + r * 300_000 + 1000)
                        for t in range(args.things)])
        return out

    def handle(ingestor, messages, batch):
        outcomes = []
        for i in range(0, len(messages), batch):
            outcomes += ingestor.handle_batch(messages[i:i + batch])
        assert all(getattr(o, "accepted", False) for o in outcomes), "every report accepted"

    def once(db, batch):
        engine = Engine(Store(db), ml=None)
        engine.apply_profile(str(profile), attach="all")
        ingestor = Ingestor(engine)
        msgs = rounds()
        for messages in msgs[:2]:
            handle(ingestor, messages, batch)
        measured = [m for messages in msgs[2:-1] for m in messages]
        start = time.process_time()
        handle(ingestor, measured, batch)
        cpu_ms = (time.process_time() - start) * 1000 / len(measured)
        trips = statements = None
        if hasattr(engine.store, "dsn"):  # PostgreSQL: one more round, traced (tracing costs CPU)
            with ProtocolTrace(engine.store) as trace:
                handle(ingestor, msgs[-1], batch)
            trips, statements = trace.round_trips / args.things, trace.statements / args.things
        engine.store.close()
        return cpu_ms, trips, statements

    batches = [int(b) for b in args.batches.split(",")]
    results = {}
    load_before = os.getloadavg()[0]
    pg = Postgres() if (PG_BIN / "initdb").exists() else None
    try:
        if pg:
            pg.start()
        for n, batch in enumerate(batches):
            for backend in ("sqlite", "postgresql") if pg else ("sqlite",):
                runs = []
                for r in range(args.repeats):
                    if backend == "sqlite":
                        with tempfile.TemporaryDirectory() as tmp:
                            runs.append(once(str(Path(tmp) / "e.db"), batch))
                    else:
                        name = f"bench_{n}_{r}"
                        with psycopg.connect(pg.dsn, autocommit=True) as conn:
                            conn.execute(f"CREATE DATABASE {name}")
                        runs.append(once(pg.dsn.rsplit("/", 1)[0] + "/" + name, batch))
                results[(backend, batch)] = min(runs)
    finally:
        if pg:
            pg.stop()
    lines = [f"`python3 bench/bench_batch_store.py --things {args.things} --rounds {args.rounds}` on "
             f"{platform.machine()}, {os.cpu_count()} cores, load average {load_before:.1f}, "
             f"{time.strftime('%Y-%m-%d')}{' (code: ' + args.code + ')' if args.code else ''}:", "",
             "| batch | SQLite CPU ms/report | PostgreSQL CPU ms/report | PostgreSQL round trips/report | "
             "PostgreSQL statements/report |", "|---|---|---|---|---|"]
    for batch in batches:
        sqlite = results[("sqlite", batch)]
        pgres = results.get(("postgresql", batch))
        lines.append(f"| {batch} | {sqlite[0]:.2f} | " + (
            f"{pgres[0]:.2f} | {pgres[1]:.2f} | {pgres[2]:.1f} |" if pgres else "- | - | - |"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
