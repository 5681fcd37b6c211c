"""`garrison-detect serve --nats ...` and `garrison-detect nats-setup`: the scale-out deployment.

N workers share one PostgreSQL database and consume the partitions of a NATS JetStream stream
(garrison.detect.ingest.jetstream); each partition is owned by one worker at a time through
advisory locks (garrison.detect.ingest.leases). docs/scale-out.md describes the deployment.
"""

import argparse
import logging
import signal
import threading
from typing import List, Optional

from garrison.detect.clock import from_environment
from garrison.detect.state.store import StoreError, is_postgres

log = logging.getLogger("garrison.detect")

DEFAULT_REPLICAS = 3
DEFAULT_BATCH = 100


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("scale-out on NATS JetStream + PostgreSQL (docs/scale-out.md)")
    group.add_argument(
        "--nats",
        metavar="URLS",
        help="consume reports from NATS JetStream instead of --broker: "
        "nats://HOST:PORT of the cluster's nodes, comma-separated; needs --db postgresql://...",
    )
    group.add_argument(
        "--partitions",
        metavar="LIST",
        help="the partitions this worker prefers, e.g. 0,1 (default: all, or those of --worker-index)",
    )
    group.add_argument(
        "--worker-index",
        type=int,
        metavar="I",
        help="this worker's index, 0..N-1: it prefers the partitions p with p %% N == I",
    )
    group.add_argument("--workers", type=int, metavar="N", help="how many workers share the partitions")
    group.add_argument(
        "--partition-count",
        type=int,
        metavar="P",
        help="partitions of the stream (created with this many if missing; must match an existing stream)",
    )
    group.add_argument(
        "--replicas",
        type=int,
        default=DEFAULT_REPLICAS,
        help=f"stream replicas when creating it (default {DEFAULT_REPLICAS})",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"reports fetched and committed together per partition (default {DEFAULT_BATCH})",
    )
    group.add_argument(
        "--no-takeover",
        action="store_true",
        help="never consume partitions other workers prefer "
        "(by default a worker takes over the partitions of a dead one until it is back)",
    )
    group.add_argument("--nats-creds", metavar="FILE", help="NATS user credentials file")
    group.add_argument(
        "--nats-monitor",
        metavar="URLS",
        help="the nodes' monitoring endpoints, http://HOST:PORT "
        "(nats-server's `http:`), comma-separated, one per node: the cloud-side metrics (connections, "
        "attempts, disconnects, messages, source address) are computed from their /connz "
        "(docs/profiles.md); give every worker the same list",
    )


def add_setup_command(sub, parents) -> None:
    setup = sub.add_parser(
        "nats-setup",
        help="Create (or re-partition) the JetStream stream and consumers.",
        description="Create the report stream, one durable consumer per partition and the "
        "dead-letter stream (idempotent). With a different --partitions on an existing stream, "
        "re-partition it: drain it first (docs/scale-out.md).",
        parents=parents,
    )
    setup.add_argument("--nats", required=True, metavar="URLS", help="nats://HOST:PORT,... of the cluster")
    setup.add_argument(
        "--partitions",
        type=int,
        required=True,
        metavar="P",
        help="number of partitions (the servers' mapping must use partition(P,1))",
    )
    setup.add_argument("--replicas", type=int, default=DEFAULT_REPLICAS, help=f"default {DEFAULT_REPLICAS}")
    setup.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help="the consumers' max_ack_pending (the workers' --batch-size)",
    )
    setup.add_argument("--nats-creds", metavar="FILE", help="NATS user credentials file")
    setup.add_argument(
        "--config",
        metavar="FILE",
        help="the workers' engine config (docs/detect.md): its [dead_letters] max_files / max_bytes bound "
        "the dead-letter stream (default 1,000 messages, 64 MiB; the workers set their own at start)",
    )
    setup.set_defaults(func=cmd_nats_setup)


def _servers(text: str) -> List[str]:
    from garrison.detect.cli import UsageError

    servers = [s.strip() for s in text.split(",") if s.strip()]
    if not servers or not all(s.startswith(("nats://", "tls://")) for s in servers):
        raise UsageError(f"--nats takes nats://HOST:PORT URLs, comma-separated, got {text!r}")
    return servers


def _monitor_urls(text: Optional[str]) -> Optional[str]:
    from garrison.detect.cli import UsageError

    if not text:
        return None
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
        raise UsageError(f"--nats-monitor takes http://HOST:PORT URLs, comma-separated, got {text!r}")
    return ",".join(urls)


def preferred_partitions(args, count: int) -> List[int]:
    from garrison.detect.cli import UsageError

    if args.partitions:
        try:
            chosen = sorted({int(p) for p in args.partitions.split(",") if p.strip()})
        except ValueError:
            raise UsageError(f"--partitions takes numbers like 0,1, got {args.partitions!r}") from None
        bad = [p for p in chosen if not 0 <= p < count]
        if bad or not chosen:
            raise UsageError(f"--partitions: the stream has partitions 0..{count - 1}, got {args.partitions!r}")
        return chosen
    if args.workers is not None or args.worker_index is not None:
        if args.workers is None or args.worker_index is None or not 0 <= args.worker_index < args.workers:
            raise UsageError("--worker-index I and --workers N go together, with 0 <= I < N")
        return [p for p in range(count) if p % args.workers == args.worker_index]
    return list(range(count))


def _connect(args, config):
    from garrison.detect.cli import UsageError
    from garrison.detect.ingest.jetstream import DeadLetterCaps, NatsIngest

    servers = _servers(args.nats)
    ingest = NatsIngest(
        servers,
        ingestor=None,
        batch_size=args.batch_size,
        user_credentials=getattr(args, "nats_creds", None),
        dead_letters=DeadLetterCaps(config.dead_letters_max_files, config.dead_letters_max_bytes),
    )
    try:
        ingest.start(timeout=10)
    except Exception as exc:
        raise UsageError(f"cannot reach NATS at {args.nats}: {exc or type(exc).__name__}") from None
    return ingest


def cmd_nats_setup(args) -> int:
    from garrison.detect import config as configuration
    from garrison.detect.ingest.jetstream import DEADLETTER_STREAM, STREAM

    if args.partitions < 1 or args.replicas < 1:
        raise StoreError("--partitions and --replicas must be at least 1")
    config = configuration.load(args.config) if args.config else configuration.Config()
    ingest = _connect(args, config)
    try:
        count = ingest.setup(args.partitions, args.replicas, repartition=True)
    finally:
        ingest.disconnect()
    print(f"stream {STREAM}: {count} partitions, consumers garrison-p0..garrison-p{count - 1}")
    caps = ingest.dead_letters
    print(f"stream {DEADLETTER_STREAM}: at most {caps.max_msgs} messages, {caps.max_bytes} bytes")
    return 0


def serve_nats(args) -> int:
    from garrison.detect.cli import UsageError
    from garrison.detect.cli.serve import config_from as _serve_config
    from garrison.detect.service import _start_api
    from garrison.detect.cli.cloud import start_nats_view
    from garrison.detect.console.prometheus import watch_ingest
    from garrison.detect.engine import Engine
    from garrison.detect.ingest.frontdoor import Ingestor
    from garrison.detect.ingest.leases import PartitionLeases
    from garrison.detect.respond.alerts import AlertDispatcher, targets_from_config
    from garrison.detect.state.store import Store

    if not is_postgres(args.db):
        raise UsageError("--nats needs the workers' shared database: --db postgresql://USER@HOST/DB")
    if args.broker:
        raise UsageError("--nats and --broker exclude each other (devices reach NATS's MQTT listener)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.dead_letters:
        raise UsageError(
            "with --nats, reports that keep failing go to the stream GARRISON_DEADLETTER, not --dead-letters"
        )
    monitor = _monitor_urls(args.nats_monitor)
    config = _serve_config(args)
    check_api_token(config)
    store = Store(args.db)
    engine = Engine(store, from_environment(args.clock_offset), config)
    for path, target in config.profiles:
        profile, created = engine.apply_profile(path, attach=target)
        log.info("%s security profile %s from %s", "created" if created else "replaced", profile.name, path)
    ingest = _connect(args, config)
    ingest.ingestor = Ingestor(engine, min_interval_s=config.min_report_interval_s, strict=config.strict)
    ingest.now_ms = engine.clock.now_ms
    watch_ingest(engine, ingest.ingestor, ingest)  # GET /metrics: reports, dead letters kept and dropped
    try:
        count = ingest.setup(args.partition_count, args.replicas)
    except ValueError as exc:
        ingest.disconnect()
        raise UsageError(str(exc)) from None
    preferred = preferred_partitions(args, count)
    alert_conf = config.alerts if config.alerts is not None else {"log": True, "mqtt": True}
    dispatcher = AlertDispatcher(targets_from_config(alert_conf, mqtt_publish=ingest))
    engine.alerts = None  # until this worker holds the periodic lease: one worker empties the outbox
    tag = f"garrison-detect[{','.join(map(str, preferred))}]"
    leases = PartitionLeases(
        args.db, count, preferred, ingest.own, ingest.disown, takeover=not args.no_takeover, name=tag
    )
    api = _start_api(engine, config, args.db)
    poller = start_nats_view(engine, monitor)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    leases.start()
    log.info(
        "serving: NATS %s, %d partitions (preferring %s), database %s, min report interval %gs%s",
        args.nats,
        count,
        ",".join(map(str, preferred)),
        _redacted(args.db),
        config.min_report_interval_s,
        f", API {api.url}" if api else "",
    )
    try:
        while not stop.wait(0.5):
            engine.alerts = dispatcher if leases.periodic else None
            if not leases.periodic:
                continue
            try:
                engine.tick()
            except Exception as exc:  # periodic work must never stop the engine
                if getattr(exc, "transient", False):
                    log.info("periodic work met a concurrent write (%s); again on the next tick", exc)
                else:
                    log.exception("periodic work failed; retrying on the next tick")
    finally:
        log.info("stopping")
        if poller:
            poller.stop()
        leases.stop()  # answers and acknowledges the batches in hand, then lets the partitions go
        if api:
            api.stop()
        if engine.alerts is not None:
            engine.dispatch_alerts()
        dispatcher.close(5.0)
        ingest.disconnect()
        store.close()
    return 0


def check_api_token(config) -> None:
    """With a PostgreSQL --db there is no database file to keep a generated token next to."""
    from garrison.detect.cli import UsageError

    if config.api_enabled and not config.api_token and not config.api_token_file:
        raise UsageError("with a postgresql:// --db, give the API token: --api-token-file FILE or $GARRISON_API_TOKEN")


def serve_lock(db: str) -> Optional[object]:
    """The one MQTT-fed `serve` on a PostgreSQL database (two would share one MQTT session)."""
    from garrison.detect.cli import UsageError
    from garrison.detect.ingest.leases import SERVE_MQTT, ExclusiveLock

    try:
        return ExclusiveLock(db, SERVE_MQTT, "")
    except RuntimeError:
        raise UsageError(
            f"another garrison-detect serve --broker is running on {_redacted(db)} "
            "(for several workers use --nats: docs/scale-out.md)"
        ) from None


def _redacted(dsn: str) -> str:
    # imported here: garrison.detect.state.postgres loads psycopg (9 MB, 60 ms), which an engine
    # on SQLite never needs, and every `garrison-detect` command imports this module
    from garrison.detect.state.postgres import redact_dsn

    return redact_dsn(dsn)
