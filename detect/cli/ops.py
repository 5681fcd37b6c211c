"""`garrison-detect demo|pki|broker-config ...`: operator tools whose module has its own parser;
`garrison-detect NAME ...` runs MODULE.main([...]) with everything after NAME."""

import argparse
import importlib

DELEGATED = {
    "demo": ("garrison.detect.ops.demo", "run a self-contained demo (local broker, engine, agent); see demo --help"),
    "pki": ("garrison.detect.ops.pki", "fleet certificates: CA, devices, broker, engine; see pki --help"),
    "broker-config": ("garrison.detect.ops.brokerconf", "write a mutual-TLS Mosquitto config with per-thing ACLs"),
}


def add_parsers(sub) -> None:
    for name, (_, help_text) in DELEGATED.items():
        delegated = sub.add_parser(name, help=help_text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(func=run)


def run(args) -> int:
    return importlib.import_module(DELEGATED[args.command][0]).main(list(args.rest))
