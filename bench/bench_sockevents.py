"""The agent's CPU and memory with socket events on, against the snapshot-only agent, in one run.

In a network namespace this benchmark creates (root; removed at the end), with a Mosquitto inside:
  events    the real `garrison-agent run` with --socket-events on (interval_sockets extension);
  snapshot  the same agent with --socket-events off;
both reporting every --interval s to the same broker, side by side, while a load generator in
the namespace makes short TCP connections to a local listener (each connection is two destroyed
sockets, client and server) in three phases:
  idle      no connections;
  normal    --normal connections per second (a busy device);
  storm     --storm connections per second (default 5,000), bounded by --storm-seconds.
Per phase and agent: CPU (user + system from /proc/PID/stat, as % of one core) and RSS (VmRSS at
the phase's end; VmHWM, the peak, at the end). Budgets: 30 MB RSS, < 1% of a core at a normal rate.

    sudo python3 bench/bench_sockevents.py [--interval 5] [--normal 10] [--storm 5000] [--phase-seconds 20]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_MB = 30.0
BUDGET_CPU = 1.0      # % of one core at a normal rate
TICK = os.sysconf("SC_CLK_TCK")

# Connections at RATE per second for SECONDS (at most RATE * SECONDS), to a listener it serves
# itself; closed with RST (SO_LINGER 0) so no TIME_WAIT exhausts the ephemeral ports. Prints the
# connections made.
LOAD = r"""
import socket, struct, sys, threading, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 0)); server.listen(4096); port = server.getsockname()[1]
def serve():
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.close()
threading.Thread(target=serve, daemon=True).start()
linger = struct.pack("ii", 1, 0)
made, start = 0, time.monotonic()
limit = int(rate * seconds)
while made < limit:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(now * rate) + 1
    if made >= due:
        time.sleep(min(0.01, (made + 1) / rate - now))
        continue
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    try:
        # a new loopback destination per connection (all of 127/8 is local): the collector's
        # table fills, and its bound and overflow count are exercised
        client.connect((f"127.{(made >> 16) & 255}.{(made >> 8) & 255}.{(made & 255) or 1}", port))
        made += 1
    except OSError:
        pass
    client.close()
time.sleep(0.2)
print(made)
"""


def ip(*argv):
    subprocess.run(["ip", *argv], check=True, capture_output=True)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])     # utime + stime


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0, help="agents' report interval (s)")
    parser.add_argument("--normal", type=float, default=10.0, help="connections per second, normal phase")
    parser.add_argument("--storm", type=float, default=5000.0, help="connections per second, storm phase")
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--storm-seconds", type=float, default=15.0)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("mosquitto"):
        sys.exit("bench_sockevents needs root (a network namespace) and mosquitto")

    ns = f"gbench-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="garrison-bench-sockevents-"))
    procs = []
    try:
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        conf = work / "mosquitto.conf"
        conf.write_text("listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "mosquitto", "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        agents = {}
        for name, events in (("events", "on"), ("snapshot", "off")):
            log = open(work / f"agent-{name}.log", "wb")
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "garrison.agent.cli", "run", "--thing", f"bench-{name}",
                 "--broker", "mqtt://127.0.0.1:1883", "--interval", str(args.interval), "--jitter", "0",
                 "--state-dir", str(work / name), "--socket-events", events],
                cwd=ROOT, stdout=log, stderr=log)
            procs.append(proc)
            agents[name] = proc.pid                # `ip netns exec` execs: the pid is the agent's
        time.sleep(3.0)                            # imports done, first report sent

        rows = []
        for phase, rate, seconds in (("idle", 0.0, args.phase_seconds), ("normal", args.normal, args.phase_seconds),
                                     ("storm", args.storm, args.storm_seconds)):
            before = {name: cpu_ticks(pid) for name, pid in agents.items()}
            started = time.monotonic()
            if rate:
                done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", LOAD, str(rate), str(seconds)],
                                      capture_output=True, text=True, check=True)
                made = int(done.stdout.split()[-1])
            else:
                time.sleep(seconds)
                made = 0
            elapsed = time.monotonic() - started
            after = {name: cpu_ticks(pid) for name, pid in agents.items()}
            cpu = {name: (after[name] - before[name]) / TICK / elapsed * 100 for name in agents}
            rss = {name: status_kb(pid, "VmRSS") / 1024 for name, pid in agents.items()}
            rows.append((phase, made / elapsed, cpu, rss))
        peak = {name: status_kb(pid, "VmHWM") / 1024 for name, pid in agents.items()}
        for proc in procs[1:]:
            proc.terminate()
            proc.wait(10)
        overflow = [line for line in (work / "agent-events.log").read_text().splitlines() if "not itemised" in line]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"Python {sys.version.split()[0]}, kernel {os.uname().release}, report interval {args.interval:g} s")
    print(f"{'phase':8} {'conn/s':>8}  {'CPU events':>10} {'CPU snapshot':>12} {'ratio':>6}  "
          f"{'RSS events':>10} {'RSS snapshot':>12} {'ratio':>6}")
    for phase, rate, cpu, rss in rows:
        ratio = cpu["events"] / cpu["snapshot"] if cpu["snapshot"] else float("inf")
        print(f"{phase:8} {rate:8.0f}  {cpu['events']:9.2f}% {cpu['snapshot']:11.2f}% {ratio:6.2f}  "
              f"{rss['events']:8.1f} MB {rss['snapshot']:10.1f} MB {rss['events'] / rss['snapshot']:6.2f}")
    normal_cpu = rows[1][2]["events"]
    print(f"peak RSS (VmHWM): events {peak['events']:.1f} MB, snapshot {peak['snapshot']:.1f} MB "
          f"(budget {BUDGET_MB:.0f} MB: {'OK' if max(peak.values()) <= BUDGET_MB else 'OVER'})")
    print(f"CPU at the normal rate with events: {normal_cpu:.2f}% of a core "
          f"(budget {BUDGET_CPU:.0f}%: {'OK' if normal_cpu < BUDGET_CPU else 'OVER'})")
    print(f"storm: {len(overflow)} report(s) logged overflow" + (f"; last: {overflow[-1].split(': ', 1)[-1]}"
                                                                  if overflow else ""))


if __name__ == "__main__":
    main()
