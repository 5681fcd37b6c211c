"""`garrison-agent`: collect Device Defender metric reports and publish them over MQTT."""

import argparse
import logging
import os
import signal
import sys
from typing import List, Optional

from garrison.agent import __version__, config as cfg, report
from garrison.wire import topics

EXIT_OK, EXIT_REJECTED, EXIT_CONFIG, EXIT_NO_REPLY = 0, 1, 2, 3

EXIT_CODES = """exit codes:
  0  success (run --once: report accepted; run: stopped by SIGTERM/SIGINT)
  1  run --once: report rejected for good (the error code is logged; it left the spool)
  2  bad configuration or usage (one error line on stderr)
  3  run --once: not settled: no reply in time, broker unreachable, or answered InternalError
     (the report stays spooled and is sent again by the next run)"""

log = logging.getLogger("garrison-agent")


def parser() -> argparse.ArgumentParser:
    top = cfg._OneLineParser(
        prog="garrison-agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Report what the kernel sees (listening ports, connections, traffic) as "
        "AWS IoT Device Defender metric reports over MQTT.",
        epilog="Options come from defaults < TOML file (--config) < GARRISON_* environment < flags.\n"
        "See `garrison-agent run --help`.\n\n" + EXIT_CODES,
    )
    top.add_argument("--version", action="version", version=f"garrison-agent {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=cfg._OneLineParser)
    run = commands.add_parser(
        "run",
        help="publish a report every interval (the service)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
        description=f"Publish a report every interval to {topics.report_filter('{thing}', '{format}')}, "
        "spooling reports on disk while the broker is unreachable.",
    )
    run.add_argument(
        "--once",
        action="store_true",
        help="publish one report, wait for the accepted/rejected reply, exit (see exit codes)",
    )
    collect = commands.add_parser(
        "collect",
        help="print one report to stdout and exit",
        description="Collect one report and print it to stdout (JSON text, or raw CBOR bytes).",
    )
    for sub, name in ((run, "run"), (collect, "collect")):
        sub.add_argument(
            "--config", metavar="FILE", default=None, help=f"TOML configuration file [env {cfg.ENV_PREFIX}CONFIG]"
        )
        cfg.add_flags(sub, name)
    return top


def setup_logging(level: str) -> None:
    # Under systemd the journal adds timestamps; elsewhere we do.
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


def _collect(config: cfg.Config) -> int:
    from garrison.agent.daemon import Daemon

    daemon = Daemon(config, persist_state=False)  # a look: the running agent keeps its deltas
    built, results = daemon.build()
    payload = daemon.encode(built)
    if config.format == "json":
        sys.stdout.write(payload.decode() + "\n")
    else:
        sys.stdout.buffer.write(payload)
    sys.stdout.flush()
    return EXIT_OK


def _run(config: cfg.Config, once: bool) -> int:
    from garrison.agent.daemon import Daemon

    daemon = Daemon(config)

    def on_signal(signum, frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not once:
        daemon.run_forever()
        return EXIT_OK
    try:
        report_id, reply = daemon.publish_once()
    finally:
        daemon.close()
    if reply is None:
        return EXIT_NO_REPLY
    if reply.accepted:
        return EXIT_OK
    from garrison.agent.delivery import settles

    if not settles(reply):
        return EXIT_NO_REPLY  # InternalError: kept in the spool (logged by the daemon)
    log.error("report %s rejected: %s: %s", reply.report_id, reply.error_code, reply.error_message)
    return EXIT_REJECTED


def main(argv: Optional[List[str]] = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if not args.command:
        top.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        config = cfg.load(args.config, cfg.flags_from(args))
        setup_logging(config.log_level)
        if args.command == "collect":
            return _collect(config)
        return _run(config, args.once)
    except cfg.ConfigError as exc:
        sys.stderr.write(f"garrison-agent: error: {exc}\n")
        return EXIT_CONFIG
    except Exception as exc:
        from garrison.agent.transports.base import TransportError

        if isinstance(exc, (TransportError, report.ReportError, OSError)):
            sys.stderr.write(f"garrison-agent: error: {exc}\n")
            return EXIT_CONFIG if isinstance(exc, TransportError) else 1
        raise
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
