"""The console and /metrics with a large fleet: time per request over real HTTP on loopback.

Seeds a database with THINGS things (5% with an open violation, 3 violation events each for
those, a third silent, a tenth in a group), serves it with the real ApiServer, signs in and
times each request (median of REPEAT), beside GET /health in the same run (the baseline: what
the HTTP stack alone costs):
  fleet            the first page, no filter (counts, alarms by behavior, timeline included)
  fleet search     a substring search by name
  fleet alarm      the "in alarm" filter
  fleet last page  the last page (OFFSET at the end of the fleet)
  fleet group      the group filter
  changes          the live refresh's poll
  metrics          GET /metrics (first scrape reads every event; later ones only new events)

    python3 bench/bench_console.py [--things 10000] [--repeat 15]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "detect"))

from console_support import Browser  # noqa: E402

from garrison.detect.api.server import ApiServer  # noqa: E402
from garrison.detect.engine import Engine  # noqa: E402
from garrison.detect.state.store import Store  # noqa: E402

TOKEN = "bench"


def seed(engine: Engine, things: int) -> None:
    now = engine.clock.now_ms()
    behavior = json.dumps({"name": "few-ports", "metric": "aws:num-listening-tcp-ports",
                           "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}})
    engine.create_group("lobby")
    with engine.store.transaction():
        c = engine.store._conn
        c.executemany("INSERT INTO things (name, registered_ms, last_report_id, last_received_ms, reports) "
                      "VALUES (?, ?, 1, ?, 1)",
                      [(f"dev-{i:06d}", now, now - (3600_000 if i % 3 == 0 else 0)) for i in range(things)])
        c.executemany("INSERT INTO group_members VALUES ('lobby', ?, ?)", [(f"dev-{i:06d}", now) for i in range(0, things, 10)])
        alarmed = range(0, things, 20)
        c.executemany("INSERT INTO violations (violation_id, thing, profile, behavior_name, behavior, start_ms, last_value, "
                      "last_ms) VALUES (?, ?, 'Fleet', 'few-ports', ?, ?, '{\"count\":5}', ?)",
                      [(f"v-{i}", f"dev-{i:06d}", behavior, now - i, now - i) for i in alarmed])
        c.executemany("INSERT INTO violation_events (violation_id, event_type, time_ms, thing, profile, behavior, "
                      "metric_value, alerted_ms) VALUES (?, ?, ?, ?, 'Fleet', ?, '{\"count\":5}', ?)",
                      [(f"v-{i}", kind, now - i - k, f"dev-{i:06d}", behavior, now)
                       for i in alarmed for k, kind in enumerate(("in-alarm", "alarm-cleared", "alarm-invalidated"))])


def timed(call, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(Store(Path(tmp) / "bench.db"), ml=None)
        seed(engine, args.things)
        server = ApiServer(engine, TOKEN, "127.0.0.1", 0).start()
        try:
            browser = Browser(server.url)
            browser.sign_in(TOKEN)
            last = (args.things - 1) // 50

            def get(path):
                status, _, _ = browser.get(path)
                assert status == 200, path

            def metrics():
                request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()

            rows = [("health (baseline)", timed(lambda: urllib.request.urlopen(server.url + "/health").read(), args.repeat))]
            get("/console/fleet?q=warm-up")  # the first request through the app's thread pool
            first_scrape = timed(metrics, 1)
            for name, path in (("fleet", "/console/fleet"), ("fleet search", "/console/fleet?q=99"),
                               ("fleet alarm", "/console/fleet?state=alarm"),
                               ("fleet last page", f"/console/fleet?page={last}"),
                               ("fleet group", "/console/fleet?group=lobby&page=3"), ("changes", "/console/api/changes"),
                               ("thing", "/console/things/dev-000020")):
                rows.append((name, timed(lambda p=path: get(p), args.repeat)))
            rows.append(("metrics (first scrape)", first_scrape))
            rows.append(("metrics", timed(metrics, args.repeat)))
        finally:
            server.stop()
            engine.store.close()
    base = rows[0][1]
    print(f"{args.things} things, {len(range(0, args.things, 20))} in alarm, median of {args.repeat}")
    print(f"{'request':24} {'ms':>8} {'x health':>9}")
    for name, seconds in rows:
        print(f"{name:24} {seconds * 1000:8.1f} {seconds / base:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
