"""Steady resident memory of the agent over many report cycles, beside a bare interpreter.

Runs, each in a fresh subprocess so nothing else pollutes the numbers:
  baseline  `python3 -c pass`-like interpreter: its RSS;
  agent     the real Daemon (config, collectors, deltas, spool, paho transport) doing CYCLES
            report cycles with a tiny interval: collect + encode + spool + publish with QoS 1 to
            a real Mosquitto and wait for the accepted reply of a responder (a report leaves the
            spool only with its answer) (when Mosquitto is installed; otherwise collect + encode
            + spool only).
Prints RSS at start (after the first cycle), end, peak, and growth per 1,000 cycles measured after
a warm-up, plus the agent's RSS over the baseline. Budget: 30 MB RSS (Pi Zero).

    python3 bench/bench_agent_memory.py [--cycles 2000] [--format json|cbor] [--short-names]
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MB = 30.0

RSS = """
def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
"""

BASELINE = RSS + "import json; print(json.dumps({'rss_kb': rss_kb()}))"

AGENT = RSS + """
import json, sys, time
from garrison.agent import config
from garrison.agent.daemon import Daemon
cycles, broker, state, fmt, short = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
daemon = Daemon(config.load(environ={}, thing="bench-memory", broker=broker or "mqtt://127.0.0.1:1",
                            state_dir=state, format=fmt, short_names=short, interval=0.01))
publish = bool(broker)
if publish:
    daemon.start()
    assert daemon.transport.wait_connected(20), "broker unreachable"
samples, published = [], 0
start = time.perf_counter()
for cycle in range(1, cycles + 1):
    if publish:
        daemon.cycle()                      # collect, encode, spool, publish, reply, unspool
    else:
        built, _ = daemon.build()
        entry = daemon.spool.add(built["header"]["report_id"], fmt, daemon.encode(built))
        daemon.spool.remove(entry)
    if cycle == 1 or cycle % 100 == 0:
        samples.append((cycle, rss_kb()))
elapsed = time.perf_counter() - start
left = len(daemon.spool.entries())
daemon.close()
print(json.dumps({"samples": samples, "seconds": elapsed, "spooled_left": left}))
"""


def run(code, *args):
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--format", choices=("json", "cbor"), default="json")
    parser.add_argument("--short-names", action="store_true")
    parser.add_argument("--no-broker", action="store_true", help="skip publishing even if mosquitto exists")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "tests"))
    broker = responder = None
    work = Path(tempfile.mkdtemp(prefix="garrison-bench-"))
    try:
        if shutil.which("mosquitto") and not args.no_broker:
            from fixtures import Mosquitto
            broker = Mosquitto(work / "broker").start()
            sys.path.insert(0, str(ROOT / "tests" / "agent"))
            from agent_helpers import Responder
            responder = Responder(broker.host, broker.port)
        baseline = run(BASELINE)["rss_kb"]
        result = run(AGENT, str(args.cycles), broker.url if broker else "", str(work / "state"), args.format,
                     "1" if args.short_names else "0")
    finally:
        if responder:
            responder.close()
        if broker:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    samples = result["samples"]
    start_kb, end_kb = samples[0][1], samples[-1][1]
    peak_kb = max(kb for _, kb in samples)
    warm = next(((c, kb) for c, kb in samples if c >= 200), samples[0])
    growth = (end_kb - warm[1]) / max(1, samples[-1][0] - warm[0]) * 1000
    mode = "collect+encode+spool+publish(QoS 1, Mosquitto)+reply" if broker else "collect+encode+spool"
    print(f"mode: {mode}; {args.cycles} cycles, format {args.format}{' short' if args.short_names else ''}, "
          f"Python {sys.version.split()[0]}")
    print(f"bare interpreter RSS:   {baseline / 1024:6.1f} MB")
    print(f"agent RSS start:        {start_kb / 1024:6.1f} MB  (after cycle 1)")
    print(f"agent RSS end:          {end_kb / 1024:6.1f} MB")
    print(f"agent RSS peak:         {peak_kb / 1024:6.1f} MB  (budget {BUDGET_MB:.0f} MB: "
          f"{'OK' if peak_kb / 1024 <= BUDGET_MB else 'OVER'})")
    print(f"agent over baseline:    {(peak_kb - baseline) / 1024:6.1f} MB  (peak / baseline = {peak_kb / baseline:.2f}x)")
    print(f"growth after warm-up:   {growth:+6.0f} kB per 1,000 cycles")
    print(f"cycle time:             {result['seconds'] / args.cycles * 1000:6.2f} ms per cycle")
    print(f"reports left in spool:  {result['spooled_left']}")


if __name__ == "__main__":
    main()
