"""garrison-sim: simulated fleets and attack scenarios against a Garrison (or AWS) endpoint."""

import argparse
import logging
import signal
import sys

from . import attacks, mqtt
from .devices import DEVICE_TYPES

EXAMPLES = """examples:
  garrison-sim fleet --broker mqtt://127.0.0.1:1883 --devices 2000 --accelerate 288 --duration 1d \\
      --attack backdoor@camera-0007@6h --attack ddos@gateway-0003@12h+1h --attack silent@sensor-0001@3h
  garrison-sim attacks                       # the scenarios and what each does
  garrison-sim scenarios                     # real attacks in network namespaces (root)
"""


def _positive_duration(text: str) -> float:
    try:
        value = attacks.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _attack(text: str) -> attacks.AttackSpec:
    try:
        return attacks.AttackSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _types(text: str):
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in DEVICE_TYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown device type {', '.join(bad) or '(none)'} (choose from {', '.join(DEVICE_TYPES)})"
        )
    return names


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="garrison-sim", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    top.add_argument("-v", "--verbose", action="store_true", help="log every attack and progress")
    sub = top.add_subparsers(dest="command", required=True)

    fleet = sub.add_parser(
        "fleet",
        help="run N virtual devices publishing realistic reports",
        description="Run N virtual devices (one process, a few MQTT connections) that publish "
        "Device Defender reports on a simulated clock, with attacks injected on chosen devices.",
    )
    fleet.add_argument("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://)")
    fleet.add_argument("--devices", type=int, default=100, help="number of devices (default 100)")
    fleet.add_argument(
        "--types",
        type=_types,
        default=list(DEVICE_TYPES),
        help=f"device types dealt round-robin (default {','.join(DEVICE_TYPES)})",
    )
    fleet.add_argument(
        "--accelerate",
        type=float,
        default=1.0,
        help="simulated seconds per wall second (288: a day in 5 min; 0: as fast as possible)",
    )
    fleet.add_argument(
        "--duration",
        type=_positive_duration,
        default=None,
        help="simulated time to run, e.g. 3600, 6h, 1d (default: until Ctrl-C)",
    )
    fleet.add_argument(
        "--interval",
        type=_positive_duration,
        default=300.0,
        help="report interval in simulated seconds, jittered +-10%% (default 300)",
    )
    fleet.add_argument(
        "--attack",
        type=_attack,
        action="append",
        default=[],
        metavar="SCENARIO@DEVICE@TIME[+DUR]",
        help="inject a scenario on a device (name or index) at a simulated offset, e.g. "
        "c2@camera-0002@2h or exfil@3@30m+2h; repeatable. See `garrison-sim attacks`",
    )
    fleet.add_argument("--format", choices=("json", "cbor"), default="json")
    fleet.add_argument("--short-names", action="store_true", help="short key names, as constrained devices send")
    fleet.add_argument("--clients", type=int, default=1, help="MQTT connections to spread devices over (default 1)")
    fleet.add_argument("--prefix", default="", help="prefix for thing names (to run several fleets on one engine)")
    fleet.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible fleet")

    sub.add_parser("attacks", help="list the attack scenarios")

    scen = sub.add_parser(
        "scenarios",
        help="real attacks on namespaced devices, judged by a real engine",
        description="Create network namespaces (root), run the real garrison-agent in each, "
        "perform each attack with real sockets and traffic, and print which behavior of the fleet "
        "profile fired, after how many reports and seconds.",
    )
    scen.add_argument(
        "--only",
        default=None,
        help="comma-separated scenarios (default: all of backdoor, ddos, "
        "c2, scan, exfil, silent, beacon, short-listener)",
    )
    scen.add_argument(
        "--blind",
        default=None,
        help="comma-separated scenarios to run also against a snapshot-only "
        "agent (--socket-events off, device NAME-blind): shows what reports miss between two "
        "snapshots, e.g. --blind beacon,short-listener",
    )
    scen.add_argument("--workdir", default=None, help="keep engine database and logs here (default: a temp dir)")
    scen.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the clean baseline, then for the detections (default 60)",
    )
    scen.add_argument("--json", action="store_true", help="print the matrix as JSON")
    return top


def run_fleet(args) -> int:
    from .fleet import Fleet, Publisher

    if args.duration is None and args.accelerate == 0:
        print("garrison-sim: --accelerate 0 needs a --duration", file=sys.stderr)
        return 2
    try:
        fleet = Fleet(
            args.devices, args.types, seed=args.seed, interval=args.interval, attacks=args.attack, prefix=args.prefix
        )
        publisher = Publisher(args.broker, clients=args.clients)
    except (ValueError, mqtt.BrokerError) as exc:
        print(f"garrison-sim: {exc}", file=sys.stderr)
        return 2

    def stop(*_):
        fleet.stop()
        publisher.abort()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        summary = fleet.run(
            publisher,
            args.duration if args.duration is not None else float("inf"),
            args.accelerate,
            args.format,
            args.short_names,
        )
    except mqtt.BrokerError as exc:
        print(f"garrison-sim: {exc}", file=sys.stderr)
        return 1
    finally:
        publisher.close(linger=1.0)
    summary.accepted, summary.rejected = publisher.accepted, publisher.rejected
    print("\n".join(summary.lines()))
    return 0


def run_scenarios(args) -> int:
    from . import scenarios

    return scenarios.main(args)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "attacks":
        print("\n".join(attacks.describe()))
        return 0
    if args.command == "fleet":
        return run_fleet(args)
    return run_scenarios(args)


if __name__ == "__main__":
    sys.exit(main())
