#!/usr/bin/env python3
"""An example device firmware that embeds the Garrison agent as a library.

The firmware has its own main loop (here: a greenhouse controller that reads a temperature
sensor and drives a fan). It hands the agent two custom metrics of its own, a sensor reading
and its firmware version, and calls `agent.tick()` on every pass of its loop: the agent reports
when a report is due (every --interval seconds, with jitter) and otherwise returns at once, so
the control loop keeps its rhythm. Nothing here knows the wire format; the agent does.

    python3 firmware-sim/example_firmware.py --thing greenhouse-7 --broker mqtt://127.0.0.1:1883 \
        --interval 300 --state-dir /var/lib/greenhouse

Custom metrics reach the engine as `custom_metrics.temperature_c = [{"number": 21.5}]` and
`custom_metrics.firmware_version = [{"string_list": ["2.4.1"]}]`; a security profile can judge
them (e.g. `firmware_version` `in-set ["2.4.1"]`, `temperature_c` `less-than 60`).
"""

import argparse
import logging
import math
import signal
import sys
import time
from pathlib import Path

FIRMWARE_VERSION = "2.4.1"
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")

log = logging.getLogger("greenhouse")


def read_temperature_c() -> float:
    """The board's thermal sensor if there is one, else a plausible greenhouse day curve."""
    try:
        return round(int(THERMAL_ZONE.read_text()) / 1000.0, 1)
    except (OSError, ValueError):
        hour = (time.time() / 3600.0) % 24
        return round(20.0 + 6.0 * math.sin(2 * math.pi * (hour - 9) / 24), 1)


class Greenhouse:
    """The firmware's own job: switch a fan on above a set point (hysteresis of one degree)."""

    def __init__(self, set_point_c: float = 26.0):
        self.set_point_c = set_point_c
        self.fan_on = False
        self.temperature_c = read_temperature_c()

    def step(self) -> None:
        self.temperature_c = read_temperature_c()
        if self.temperature_c > self.set_point_c + 0.5 and not self.fan_on:
            self.fan_on = True
            log.info("fan on at %.1f C", self.temperature_c)
        elif self.temperature_c < self.set_point_c - 0.5 and self.fan_on:
            self.fan_on = False
            log.info("fan off at %.1f C", self.temperature_c)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Example firmware embedding the Garrison agent (garrison.agent.api).")
    parser.add_argument("--thing", required=True, help="thing name of this device")
    parser.add_argument("--broker", default="mqtt://localhost:1883", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between reports (default 300)")
    parser.add_argument("--state-dir", required=True, help="where the agent keeps report ids, counters and spool")
    parser.add_argument("--format", choices=("json", "cbor"), default="json")
    parser.add_argument("--ca", help="CA certificate of the broker (TLS)")
    parser.add_argument("--cert", help="device certificate (mutual TLS)")
    parser.add_argument("--key", help="device private key (mutual TLS)")
    parser.add_argument("--reports", type=int, default=0, help="stop after this many reports (0: run forever)")
    parser.add_argument("--loop-period", type=float, default=0.2, help="seconds per pass of the control loop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from garrison.agent.api import Agent  # the only Garrison import the firmware needs
    from garrison.agent.config import ConfigError

    tls = {k: v for k, v in (("ca", args.ca), ("cert", args.cert), ("key", args.key)) if v}
    try:
        agent = Agent(
            thing=args.thing,
            broker=args.broker,
            interval=args.interval,
            state_dir=args.state_dir,
            format=args.format,
            **tls,
        )
    except ConfigError as exc:
        print(f"example_firmware: {exc}", file=sys.stderr)
        return 2

    greenhouse = Greenhouse()
    agent.add_custom_metric("temperature_c", lambda: greenhouse.temperature_c)
    agent.add_custom_metric("firmware_version", lambda: [FIRMWARE_VERSION])

    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    made = 0
    try:
        while running and (args.reports == 0 or made < args.reports):
            greenhouse.step()  # the firmware's own work
            report_id = agent.tick()  # reports when due, else returns at once
            if report_id is not None:
                made += 1
                log.info(
                    "report %d (temperature %.1f C, fan %s)",
                    report_id,
                    greenhouse.temperature_c,
                    "on" if greenhouse.fan_on else "off",
                )
            time.sleep(args.loop_period)
        # give the last report a moment to leave: tick() sends any backlog while connected
        deadline = time.monotonic() + 5
        while agent.daemon.spool.entries() and time.monotonic() < deadline:
            agent.tick()
            time.sleep(0.1)
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
