#!/usr/bin/env python3
"""How much a device can make Mosquitto hold for the engine's offline session.

The engine's persistent session subscribes and goes away (a restart, an outage); one device
then publishes REPORTS reports of 128 KiB (the largest report) at QoS 1. Measured in the same
run, each on its own real Mosquitto with mutual TLS and the certificates from `pki`:

- the configuration `garrison-detect broker-config` writes (max_queued_bytes 256 MiB);
- baseline: the same configuration without max_queued_bytes (what it wrote before issue 10,
  bounded only by max_queued_messages 100000, i.e. about 12.5 GiB of 128 KiB reports).

Printed: Mosquitto's RSS before and after, and how many reports the engine gets when it returns.

    python3 bench/bench_broker_queue.py [--reports 3000] [--record docs/bench-broker-queue.md]
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "reliability")]

from garrison.detect.ops import brokerconf, pki  # noqa: E402
from fixtures import free_port, wait_for_port  # noqa: E402
from mqtt_clients import Client, wait_for  # noqa: E402
from garrison.wire import topics  # noqa: E402
from garrison.wire.limits import MAX_PAYLOAD_BYTES  # noqa: E402

TOPIC = topics.report_topic("pump-1", "json")
SIZE = MAX_PAYLOAD_BYTES


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(workdir: Path, reports: int, bounded: bool) -> dict:
    ca = pki.FleetCA(workdir / "pki")
    ca.init()
    ca.issue_server(["127.0.0.1"])
    engine_files = ca.issue_engine()
    ca.issue_thing("pump-1")
    port = free_port()
    conf, _ = brokerconf.write(workdir / "broker", ca.cert_path, ca.dir / "server.crt", ca.dir / "server.key",
                               port=port, bind="127.0.0.1", run_as="root" if os.geteuid() == 0 else None)
    if not bounded:
        conf.write_text("\n".join(l for l in conf.read_text().splitlines() if not l.startswith("max_queued_bytes")))
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)

        def client(files, **kwargs):
            return Client("127.0.0.1", port, str(ca.cert_path), str(files[0]), str(files[1]), **kwargs)
        engine = client(engine_files, client_id="garrison-detect", clean_session=False).wait_connected()
        engine.subscribe(topics.report_filter())
        engine.close()
        before = rss_mib(proc.pid)
        device = client(ca.thing_paths("pump-1")).wait_connected()
        payload = b"x" * SIZE
        for i in range(reports):
            info = device.client.publish(TOPIC, payload, qos=1)
            if i % 100 == 99:
                info.wait_for_publish(60)
        device.client.publish(TOPIC, b"last", qos=1).wait_for_publish(60)
        device.close()
        after = rss_mib(proc.pid)
        engine = client(engine_files, client_id="garrison-detect", clean_session=False).wait_connected()
        seen = []
        wait_for(lambda: (seen.append(len(engine.received())) or len(seen) > 40 and seen[-1] == seen[-41]), 600,
                 "the queue to drain")
        received = len(engine.received())
        engine.close()
        return {"before": before, "after": after, "received": received}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--record", help="write the results as Markdown to this file")
    args = parser.parse_args()
    rows = []
    for label, bounded in (("baseline: no max_queued_bytes (before)", False), ("broker-config (now)", True)):
        with tempfile.TemporaryDirectory(prefix="bench-broker-queue-") as tmp:
            result = run(Path(tmp), args.reports, bounded)
        rows.append((label, result))
        print(f"{label}: broker RSS {result['before']:.0f} -> {result['after']:.0f} MiB; "
              f"engine received {result['received']} of {args.reports + 1}")
    base, now = rows[0][1], rows[1][1]
    growth = (now["after"] - now["before"]) / max(base["after"] - base["before"], 1e-9)
    print(f"broker growth now / before: {growth:.2f}")
    if args.record:
        lines = ["# Broker memory for the engine's offline session (bench/bench_broker_queue.py)", "",
                 f"{args.reports + 1} QoS 1 reports ({args.reports} of 128 KiB) from one device while the engine's "
                 "persistent session is offline; Mosquitto "
                 f"{subprocess.run(['mosquitto', '-h'], capture_output=True, text=True).stdout.split()[2]}, "
                 f"{platform.machine()}, Python {platform.python_version()}.", "",
                 "| configuration | broker RSS before | after | reports the engine gets back |", "|---|---|---|---|"]
        for label, r in rows:
            lines.append(f"| {label} | {r['before']:.0f} MiB | {r['after']:.0f} MiB | {r['received']} |")
        lines += ["", f"Growth now / before: {growth:.2f}. Past the bound Mosquitto drops new reports for the "
                  "session silently (the device still gets its PUBACK): see docs/security.md.", ""]
        Path(args.record).write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
