"""What naming socket owners costs the agent per report: ReportCollector.collect with the
`socket_owners` extension against without it, in the same process, on the same live sockets.

    python3 bench/bench_owners.py [--listeners 1500] [--pairs 1000] [--runs 15] [--no-write]

The sockets (TCP listeners on loopback, established loopback pairs) are held by this process;
the /proc scan walks every process of the host as the agent's would. Time is the median of
`--runs` collections after a warm-up, alternating the two modes; memory is the traced Python
allocation peak of one collection (tracemalloc). Results go to docs/bench-owners.md.
"""
import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bench-owners.md"


def hold(listeners, pairs):
    held = []
    for _ in range(listeners):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        held.append(s)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(pairs)
    for _ in range(pairs):
        c = socket.create_connection(server.getsockname())
        held += [c, server.accept()[0]]
    return held + [server]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=1500)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from garrison.agent.collect import ReportCollector
    held = hold(args.listeners, args.pairs)
    state = Path(tempfile.mkdtemp())
    modes = {name: ReportCollector(state, ["listening_tcp", "listening_udp", "connections"], persist=False,
                                   socket_owners=name != "without owners", max_list_items=5000)
             for name in ("without owners", "with owners, sockets changed", "with owners, sockets unchanged")}
    times = {name: [] for name in modes}
    for name, collector in modes.items():
        collector.collect(1)   # warm-up (imports)
    for _ in range(args.runs):
        for name, collector in modes.items():
            if name == "with owners, sockets changed":
                collector._owner_cache.looked_for = set()   # as if every socket were new: a full /proc scan
            start = time.perf_counter()
            collector.collect(1)
            times[name].append((time.perf_counter() - start) * 1000)
    peaks = {}
    for name, collector in modes.items():
        tracemalloc.start()
        built, _ = collector.collect(1)
        peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    named = len(built["metrics"]["socket_owners"]["listening_ports"]) + len(built["metrics"]["socket_owners"]["connections"])
    base = statistics.median(times["without owners"])
    rows = [f"| {name} | {statistics.median(t):.1f} | {min(t):.1f} | {statistics.median(t) / base:.2f} | {peaks[name]:.1f} |"
            for name, t in times.items()]
    processes = sum(1 for e in os.listdir("/proc") if e.isdigit())
    text = "\n".join([
        "# Socket owners benchmark", "",
        f"Written by `python3 bench/bench_owners.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {processes} processes on the host).", "",
        f"{args.listeners} TCP listeners and {args.pairs} established loopback pairs held by the benchmark "
        f"({len(held)} sockets); one collection = listening TCP + UDP + established TCP, as the agent does per "
        f"report; {named} sockets named with their owner. Median of {args.runs} alternating runs; memory is "
        "the Python allocation peak of one collection (tracemalloc).", "",
        "| mode | median ms | min ms | time vs without | allocation peak MiB |", "|---|---:|---:|---:|---:|",
        *rows, "",
        "Budget: one collection under 50 ms with 5,000 sockets (DESIGN.md). The scan of `/proc/*/fd` is the cost "
        "and grows with the host's processes and their descriptors; the agent scans only when a report holds a "
        "socket the previous scan did not see (\"sockets unchanged\" is the steady state of a device whose "
        "daemons keep their sockets; \"sockets changed\" forces the scan every time). At a 300 s interval even the "
        "full scan is far under 1% of a core. `socket_owners = off` in the agent's configuration removes it.", ""])
    print(text)
    if not args.no_write:
        DOC.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
