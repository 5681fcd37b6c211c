"""`garrison-detect`: run the detect engine and manage its state.

    garrison-detect serve --broker mqtt://HOST:PORT --db PATH [--config FILE] [--min-report-interval S]
    garrison-detect serve --nats nats://A,nats://B,... --db postgresql://... [--worker-index I --workers N]
    garrison-detect nats-setup --nats URLS --partitions P [--replicas 3]
    garrison-detect profiles apply FILE [--attach all|group:NAME|thing:NAME]
    garrison-detect profiles list | show NAME | delete NAME | attach NAME TARGET | detach NAME TARGET
    garrison-detect violations list [--active] [--thing T] [--json]
    garrison-detect violations verify ID STATE [--description TEXT]
    garrison-detect violations events [--thing T] [--json]
    garrison-detect things list | add NAME | delete NAME
    garrison-detect groups create NAME | delete NAME | add GROUP THING | remove GROUP THING | list
    garrison-detect actions list
    garrison-detect ml summaries [--profile P] [--behavior B] [--thing T] [--config FILE] [--json]
    garrison-detect audit run|checks|tasks|findings|suppress|schedule|mitigate ...   (see audit --help)
    garrison-detect demo ... | pki ... | broker-config ...   (each with its own --help)

Every command but `demo` works on the SQLite file given by --db (default $GARRISON_DB, else
./garrison-detect.db); WAL mode lets them run while `serve` uses the same file. A postgresql://
URL as --db uses PostgreSQL instead (the scale-out deployment: docs/scale-out.md). --json prints
AWS-shaped records; otherwise a table. Bad input: one line on stderr, exit status 2.
"""
import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, List, Optional, Sequence

from garrison.detect import config as configuration
from garrison.detect.respond.actions import ActionError
from garrison.detect.cli import respond as respond_cli
from garrison.detect.respond.alerts import AlertConfigError
from garrison.detect.clock import SystemClock, from_environment
from garrison.detect.judge.profiles import ProfileError
from garrison.detect.cli.cloud import start_broker_view, warn_unsourced
from garrison.detect.state.store import Store, StoreBusy, StoreError, is_postgres
from garrison.detect.respond.violations import VERIFICATION_STATES

PROG = "garrison-detect"
DEFAULT_DB = "garrison-detect.db"
DB_ENV = "GARRISON_DB"
TOKEN_ENV = "GARRISON_API_TOKEN"
EXIT_USAGE = 2

log = logging.getLogger("garrison.detect")


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------- output

def _when(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _table(headers: Sequence[str], rows: List[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _print(args, records: Any, headers: Sequence[str], rows: List[Sequence[Any]], empty: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(records, indent=2))
    elif rows:
        print(_table(headers, rows))
    else:
        print(empty)


# ---------------------------------------------------------------------------------- commands

def _engine(args):
    from garrison.detect.engine import Engine
    return Engine(Store(args.db), SystemClock())


def cmd_profiles(args) -> int:
    engine = _engine(args)
    if args.action == "apply":
        profile, created = engine.apply_profile(args.file, attach=args.attach)
        targets = engine.store.attachments_of(profile.name)
        print(f"{'created' if created else 'updated'} security profile {profile.name} "
              f"({len(profile.behaviors)} behaviors; attached to {', '.join(targets) or 'nothing yet'})")
        warn_unsourced(engine, profile)
    elif args.action == "list":
        items = engine.list_profiles()
        _print(args, items, ("PROFILE", "BEHAVIORS", "TARGETS"),
               [(p["securityProfileName"], len(p["behaviors"]), ", ".join(p["targets"])) for p in items],
               "no security profiles")
    elif args.action == "show":
        print(json.dumps(engine.describe_profile(args.name), indent=2))
    elif args.action == "delete":
        engine.delete_profile(args.name)
        print(f"deleted security profile {args.name}")
    elif args.action == "attach":
        done = engine.attach(args.name, args.target)
        print(f"{'attached' if done else 'already attached:'} {args.name} to {args.target}")
    elif args.action == "detach":
        done = engine.detach(args.name, args.target)
        print(f"{'detached' if done else 'was not attached:'} {args.name} from {args.target}")
    return 0


def cmd_violations(args) -> int:
    engine = _engine(args)
    if args.action == "verify":
        record = engine.verify(args.id, args.state, args.description)
        if args.json:
            print(json.dumps(record, indent=2))
        else:
            print(f"violation {args.id}: {args.state}")
    elif args.action == "list":
        records = (engine.active_violations(args.thing, args.profile) if args.active
                   else engine.all_violations(args.thing, args.profile))
        _print(args, records, ("VIOLATION ID", "THING", "PROFILE", "BEHAVIOR", "LAST VALUE", "STARTED",
                               "STATUS", "VERIFICATION"),
               [(r["violationId"], r["thingName"], r["securityProfileName"], r["behavior"].get("name"),
                 _value(r["lastViolationValue"]) + _explained(r), _when(r["violationStartTime"]),
                 "active" if r.get("active", True) else r.get("violationEndType"), r["verificationState"])
                for r in records], "no active violations" if args.active else "no violations")
    elif args.action == "events":
        records = engine.violation_events(args.thing, args.profile, args.since, args.until)
        _print(args, records, ("TIME", "EVENT", "THING", "PROFILE", "BEHAVIOR", "VALUE", "VIOLATION ID"),
               [(_when(r["violationEventTime"]), r["violationEventType"], r["thingName"],
                 r["securityProfileName"], r["behavior"].get("name"), _value(r["metricValue"]), r["violationId"])
                for r in records], "no violation events")
    return 0


def _explained(record) -> str:
    """The violation's explanation (the process behind a port, an ML model's reason), if any."""
    text = (record.get("violationEventAdditionalInfo") or {}).get("explanation")
    return f" ({text})" if isinstance(text, str) and text else ""


def cmd_things(args) -> int:
    engine = _engine(args)
    if args.action == "list":
        things = engine.store.list_things()
        _print(args, things, ("THING", "REPORTS", "LAST REPORT", "GROUPS"),
               [(t["thingName"], t["reports"], _when(t["lastReportTime"]), ", ".join(t["groups"])) for t in things],
               "no things")
    elif args.action == "add":
        created = engine.add_thing(args.name)
        print(f"{'registered' if created else 'already registered:'} thing {args.name}")
    elif args.action == "delete":
        engine.delete_thing(args.name)
        print(f"deleted thing {args.name}")
    return 0


def cmd_groups(args) -> int:
    engine = _engine(args)
    if args.action == "list":
        groups = engine.store.list_groups()
        _print(args, groups, ("GROUP", "THINGS", "MEMBERS"),
               [(g["groupName"], len(g["things"]), _value(g["things"])) for g in groups], "no thing groups")
    elif args.action == "create":
        created = engine.create_group(args.name, args.description)
        print(f"{'created' if created else 'already exists:'} thing group {args.name}")
    elif args.action == "delete":
        engine.delete_group(args.name)
        print(f"deleted thing group {args.name}")
    elif args.action == "add":
        added = engine.add_to_group(args.group, args.thing)
        print(f"{'added' if added else 'already in the group:'} {args.thing} to {args.group}")
    elif args.action == "remove":
        removed = engine.remove_from_group(args.group, args.thing)
        print(f"{'removed' if removed else 'was not in the group:'} {args.thing} from {args.group}")
    return 0


def cmd_actions(args) -> int:
    entries = Store(args.db).list_actions(args.thing)
    _print(args, entries, ("TIME", "THING", "ACTION", "GROUP", "OUTCOME", "VIOLATION ID"),
           [(_when(e["time"]), e["thingName"], e["action"]["type"], e["action"].get("group"),
             e["outcome"], e["violationId"]) for e in entries], "no mitigation actions")
    return 0


def cmd_ml(args) -> int:
    """ML Detect model status, per behavior and per thing (GetBehaviorModelTrainingSummaries)."""
    from garrison.detect.engine import Engine
    # the [ml] section of the engine's config decides when a model is trained (and so its percentage)
    config = configuration.load(args.config) if args.config else configuration.Config()
    engine = Engine(Store(args.db), from_environment(), config)
    result = engine.ml_training_summaries(args.profile, args.behavior, args.thing)
    rows = []
    for s in [] if args.thing else result["summaries"]:
        counts = s.get("modelStatusCounts") or {}
        rows.append((s["securityProfileName"], s["behaviorName"], f"({sum(counts.values())} things)",
                     s["modelStatus"], "-", _percent(s.get("datapointsCollectionPercentage")), "-",
                     _when(s.get("trainingDataCollectionStartDate")), _when(s.get("lastModelRefreshDate"))))
    for s in result["thingSummaries"]:
        rows.append((s["securityProfileName"], s["behaviorName"], s["thingName"], s["modelStatus"],
                     s["datapoints"], _percent(s["datapointsCollectionPercentage"]), s["basis"],
                     _when(s["trainingDataCollectionStartDate"]), _when(s["lastModelRefreshDate"])))
    _print(args, result, ("PROFILE", "BEHAVIOR", "THING", "STATUS", "DATAPOINTS", "COLLECTED", "JUDGED BY",
                          "TRAINING SINCE", "LAST REFRESH"), rows, "no ML behaviors")
    return 0


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}%"


# Commands whose module has its own parser: `garrison-detect NAME ...` runs MODULE.main([...]).
DELEGATED = {
    "demo": ("garrison.detect.ops.demo", "run a self-contained demo (local broker, engine, agent); see demo --help"),
    "pki": ("garrison.detect.ops.pki", "fleet certificates: CA, devices, broker, engine; see pki --help"),
    "broker-config": ("garrison.detect.ops.brokerconf", "write a mutual-TLS Mosquitto config with per-thing ACLs"),
}


def cmd_delegated(args) -> int:
    import importlib
    return importlib.import_module(DELEGATED[args.command][0]).main(list(args.rest))


def cmd_dead_letters(args) -> int:
    from garrison.detect.ingest.deadletter import DeadLetters
    records = DeadLetters(f"{args.db}.dead-letters").list()
    _print(args, records, ("TIME", "TOPIC", "BYTES", "ATTEMPTS", "REASON", "FILE"),
           [(_when(r["time_ms"] / 1000.0), r["topic"], r["size"], r["attempts"], r["reason"][:80], r["file"])
            for r in records], "no dead letters")
    return 0


# ---------------------------------------------------------------------------------- serve

def _serve_config(args) -> configuration.Config:
    config = configuration.load(args.config) if args.config else configuration.Config()
    if args.min_report_interval is not None:
        config.min_report_interval_s = args.min_report_interval
    if args.invalidation_period is not None:
        config.invalidation_period_s = configuration.duration(args.invalidation_period, "--invalidation-period")
    if args.strict:
        config.strict = True
    if args.dry_run:
        config.dry_run = True
    if args.client_id:
        config.client_id = args.client_id
    if args.api_bind:
        configuration.parse_bind(args.api_bind, "--api-bind")
        config.api_bind = args.api_bind
    token = args.api_token or os.environ.get(TOKEN_ENV)
    if token:
        config.api_token = token
    if args.api_token_file:
        config.api_token_file = args.api_token_file
    if args.metrics_public:
        config.metrics_public = True
    return config


def _tls_files(args):
    files = (args.ca, args.cert, args.key)
    for path in files:
        if path and not os.path.isfile(path):
            raise UsageError(f"no such file: {path}")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together")
    return files if any(files) else None


def _start_api(engine, config, db: str):
    """The HTTP API when configured; a token is generated into a 0600 file when none is given."""
    from garrison.detect.api.auth import load_or_create_token
    from garrison.detect.api.server import ApiServer
    if not config.api_enabled:
        return None
    token = config.api_token
    if not token:
        token_file = config.api_token_file or f"{db}.api-token"
        token, created = load_or_create_token(token_file)
        if created:
            log.warning("generated an API token in %s (mode 0600)", token_file)
    host, port = configuration.parse_bind(config.api_bind or configuration.DEFAULT_API_BIND)
    try:
        return ApiServer(engine, token, host, port).start()
    except OSError as exc:
        raise UsageError(f"cannot serve the API on {host}:{port}: {exc.strerror or exc}") from None


def _lock_database(db: str):
    """Refuse a second `serve` on the same database: two engines would fight over one MQTT session."""
    import fcntl
    if is_postgres(db):
        from garrison.detect.cli.scaleout import serve_lock
        return serve_lock(db)
    lock = open(f"{db}.serve-lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UsageError(f"another garrison-detect serve is running on {db}") from None
    return lock  # held until the process exits


def cmd_serve(args) -> int:
    from garrison.detect.respond.alerts import AlertDispatcher, targets_from_config
    from garrison.detect.engine import Engine
    from garrison.detect.ingest.frontdoor import Ingestor
    from garrison.detect.ingest.mqtt import MqttIngest
    from garrison.agent.transports.paho_compat import redact_broker_url
    from garrison.detect.ops.broker_credentials import broker_credentials

    if args.nats:  # the scale-out deployment: NATS JetStream + PostgreSQL
        from garrison.detect.cli.scaleout import serve_nats
        return serve_nats(args)
    if not args.broker:
        raise UsageError("serve needs --broker mqtt://HOST:PORT (or --nats nats://... with a postgresql:// --db)")
    # everything that can be wrong with the command line or the config fails here, in one line,
    # before any thread or connection starts
    config = _serve_config(args)
    if is_postgres(args.db):
        from garrison.detect.cli.scaleout import check_api_token
        check_api_token(config)
    user, password = broker_credentials(args.broker, args.broker_user, args.broker_password_file)
    tls = _tls_files(args)
    from garrison.detect.engine import SERVE_BUSY_TIMEOUT_MS
    store = Store(args.db, busy_timeout_ms=SERVE_BUSY_TIMEOUT_MS)  # ingest must not wait on a CLI write
    lock = _lock_database(args.db)
    engine = Engine(store, from_environment(args.clock_offset), config)
    follower = start_broker_view(engine, args.broker_log or config.broker_log)
    from garrison.detect.cli.profiles_code import sync_configured
    sync_configured(engine, config.profiles)   # the `profiles sync` path, never detaching
    ingest = MqttIngest(args.broker, Ingestor(engine, min_interval_s=config.min_report_interval_s,
                                              strict=config.strict), client_id=config.client_id, tls=tls,
                        username=user, password=password, now_ms=engine.clock.now_ms,
                        # beside a SQLite file; a PostgreSQL engine logs what it gives up on instead
                        dead_letters=None if is_postgres(args.db) else f"{args.db}.dead-letters",
                        in_flight=None if is_postgres(args.db) else f"{args.db}.inflight")
    from garrison.detect.console.prometheus import watch_ingest
    watch_ingest(engine, ingest.ingestor, ingest)  # GET /metrics reads its counters and queue
    alert_conf = config.alerts if config.alerts is not None else {"log": True, "mqtt": True}
    # alerts leave over the ingest connection: one MQTT session per engine identity
    engine.alerts = AlertDispatcher(targets_from_config(alert_conf, mqtt_publish=ingest))
    runner = respond_cli.start_runner(engine, ingest, args.broker_control)
    engine.alert_target_builder = lambda conf: AlertDispatcher(targets_from_config(conf, mqtt_publish=ingest))
    engine.metric_exporter = lambda topic, payload: ingest.publish(topic, payload, qos=1)  # exportMetric
    api = _start_api(engine, config, args.db)
    from garrison.detect.audit.schedule import Scheduler
    audits = Scheduler(engine)  # scheduled audits (garrison-detect audit schedule create)

    stop = threading.Event()
    busy_logged = 0.0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ingest.start()
    runner.start()
    deadline = time.monotonic() + 10
    while not (ingest.connected.wait(0.25) or stop.is_set() or time.monotonic() > deadline):
        pass   # a SIGTERM in this first wait must not wait it out
    if not ingest.connected.is_set() and not stop.is_set():
        log.warning("broker %s not reachable yet; retrying in the background", redact_broker_url(args.broker))
    log.info("serving: broker %s, database %s, min report interval %gs, invalidation after %gs%s%s",
             redact_broker_url(args.broker), args.db, config.min_report_interval_s, config.invalidation_period_s,
             ", strict" if config.strict else "", f", API {api.url}" if api else "")
    try:
        while not stop.wait(0.5):
            try:
                engine.tick()
                audits.tick()
            except StoreBusy as exc:  # another process writes for long: nothing lost, try again
                busy_logged = _log_busy(exc, busy_logged)
            except Exception:  # periodic work must never stop the engine
                log.exception("periodic work failed; retrying on the next tick")
    finally:
        log.info("stopping")
        ingest.stop(disconnect=False)   # answer what is queued; the connection stays for alerts
        runner.stop()
        if follower:
            follower.stop()
        if api:
            api.stop()
        engine.dispatch_alerts()
        engine.alerts.close(5.0)
        ingest.disconnect()
        store.close()
        lock.close()
    return 0


def _log_busy(exc, last: float) -> float:
    """At most one line a minute about periodic work waiting for the database."""
    if time.monotonic() - last < 60:
        return last
    log.warning("periodic work waits: %s", exc)
    return time.monotonic()


# ---------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    db_help = f"SQLite database, or a postgresql:// URL (default ${DB_ENV} or ./{DEFAULT_DB})"
    default_db = os.environ.get(DB_ENV) or DEFAULT_DB
    parser = _Parser(prog=PROG, description="Garrison detect engine: judge Device Defender reports against "
                     "security profiles, keep violations, alert and act.")
    parser.add_argument("--db", default=default_db, help=db_help)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    # --db is accepted anywhere on the line: `garrison-detect violations list --db x.db` too
    db_anywhere = argparse.ArgumentParser(add_help=False)
    db_anywhere.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[db_anywhere])

    def actions_of(command_parser: argparse.ArgumentParser):
        actions = command_parser.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
        actions.required = True
        return actions

    def action(actions, name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, parents=[db_anywhere])

    serve = command("serve", "Run the engine: ingest reports from the broker, evaluate, alert, act.")
    serve.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT (user@ or user:pass@ "
                       "allowed; a password there is visible in `ps`: prefer --broker-password-file)")
    serve.add_argument("--broker-user", metavar="NAME", help="MQTT user name (default: the one in --broker)")
    serve.add_argument("--broker-password-file", metavar="FILE", help="file whose first line is the MQTT password "
                       "(else $GARRISON_BROKER_PASSWORD, else the URL's); never logged")
    serve.add_argument("--config", help="engine configuration file (TOML or JSON; see docs/detect.md)")
    serve.add_argument("--min-report-interval", type=float, metavar="SECONDS",
                       help="accept one report per thing per this many seconds (default 300, as AWS)")
    serve.add_argument("--invalidation-period", metavar="DURATION",
                       help='silence after which violations are invalidated (default "2d")')
    serve.add_argument("--strict", action="store_true", help="accept reports only from pre-registered things")
    serve.add_argument("--dry-run", action="store_true", help="mitigation actions only log what they would do")
    serve.add_argument("--broker-control", action="store_true", help="carry out quarantine, release, disable and "
                       "enable through the broker's dynamic security plugin (broker-config --dynamic-security)")
    serve.add_argument("--client-id", help="MQTT client id (default garrison-detect)")
    serve.add_argument("--ca", help="CA certificate for the broker's TLS")
    serve.add_argument("--cert", help="client certificate (mutual TLS)")
    serve.add_argument("--key", help="client private key (mutual TLS)")
    serve.add_argument("--api-bind", metavar="HOST:PORT", help="serve the HTTP API here (default 127.0.0.1:8765 "
                       "when a token is configured)")
    serve.add_argument("--api-token", metavar="TOKEN", help=f"API bearer token; ${TOKEN_ENV} or --api-token-file "
                       "keep it out of `ps`. Without a token the API uses --api-token-file, generating it "
                       "(mode 0600) if missing")
    serve.add_argument("--api-token-file", metavar="FILE", help="file holding the API token (default DB.api-token)")
    serve.add_argument("--metrics-public", action="store_true", help="serve GET /metrics (Prometheus) without the "
                       "API token ([api] metrics_public); the console is at /console on the API's address")
    serve.add_argument("--broker-log", metavar="FILE", help="Mosquitto's log file (broker-config --metrics-log): "
                       "the source of the cloud-side metrics (aws:num-messages-sent, ...; docs/profiles.md)")
    serve.add_argument("--clock-offset", type=float, help=argparse.SUPPRESS)  # tests: shift the engine's clock
    from garrison.detect.cli import scaleout
    scaleout.add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    scaleout.add_setup_command(sub, [db_anywhere])

    profiles = command("profiles", "Security profiles (AWS CreateSecurityProfile JSON).")
    psub = actions_of(profiles)
    p = action(psub, "apply", "create or replace a profile from a JSON file")
    p.add_argument("file")
    p.add_argument("--attach", metavar="TARGET", help="all | group:NAME | thing:NAME")
    p = action(psub, "list", "list profiles")
    p.add_argument("--json", action="store_true")
    action(psub, "show", "show a profile, its targets and statuses").add_argument("name")
    action(psub, "delete", "delete a profile (its violations are invalidated)").add_argument("name")
    for verb in ("attach", "detach"):
        p = action(psub, verb, f"{verb} a profile to/from all | group:NAME | thing:NAME")
        p.add_argument("name")
        p.add_argument("target")
    profiles.set_defaults(func=cmd_profiles)
    from garrison.detect.cli import profiles_code   # sync, validate, for-target
    profiles_code.add_actions(psub, action)

    viol = command("violations", "Violations and their events.")
    vsub = actions_of(viol)
    p = action(vsub, "list", "list violations (all episodes, or --active)")
    p.add_argument("--active", action="store_true", help="only active violations (ListActiveViolations)")
    p.add_argument("--thing")
    p.add_argument("--profile")
    p.add_argument("--json", action="store_true")
    p = action(vsub, "events", "list violation events (ListViolationEvents)")
    p.add_argument("--thing")
    p.add_argument("--profile")
    p.add_argument("--since", type=float, metavar="EPOCH_SECONDS")
    p.add_argument("--until", type=float, metavar="EPOCH_SECONDS")
    p.add_argument("--json", action="store_true")
    p = action(vsub, "verify", "set a violation's verification state")
    p.add_argument("id")
    p.add_argument("state", choices=VERIFICATION_STATES, metavar="STATE", help=" | ".join(VERIFICATION_STATES))
    p.add_argument("--description", help="why (up to 1000 characters)")
    p.add_argument("--json", action="store_true")
    viol.set_defaults(func=cmd_violations)

    things = command("things", "Things (registered on their first report, or with `add`).")
    tsub = actions_of(things)
    action(tsub, "list", "list things").add_argument("--json", action="store_true")
    action(tsub, "add", "pre-register a thing (strict mode)").add_argument("name")
    action(tsub, "delete", "forget a thing").add_argument("name")
    things.set_defaults(func=cmd_things)

    dead = command("dead-letters", "Reports the engine set aside after failing to handle them again and "
                   "again (kept in DB.dead-letters/, one JSON file each, payload in base64).")
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=cmd_dead_letters)

    groups = command("groups", "Thing groups (profiles can be attached to a group).")
    gsub = actions_of(groups)
    p = action(gsub, "create", "create a group")
    p.add_argument("name")
    p.add_argument("--description", default="")
    action(gsub, "delete", "delete a group").add_argument("name")
    for verb in ("add", "remove"):
        p = action(gsub, verb, f"{verb} a thing to/from a group")
        p.add_argument("group")
        p.add_argument("thing")
    action(gsub, "list", "list groups and members").add_argument("--json", action="store_true")
    groups.set_defaults(func=cmd_groups)

    actions = command("actions", "The audit log of mitigation actions.")
    asub = actions_of(actions)
    p = action(asub, "list", "list action executions")
    p.add_argument("--thing")
    p.add_argument("--json", action="store_true")
    actions.set_defaults(func=cmd_actions)

    mlc = command("ml", "ML Detect: model status per behavior and per thing.")
    msub = actions_of(mlc)
    p = action(msub, "summaries", "model status (PENDING_BUILD, ACTIVE, EXPIRED) per ML behavior and per thing, "
               "with datapoints collected and what judges the next datapoint")
    p.add_argument("--profile", help="only this security profile")
    p.add_argument("--behavior", help="only behaviors of this name")
    p.add_argument("--thing", help="only this thing's models")
    p.add_argument("--config", help="the engine's configuration file, for its [ml] training settings")
    p.add_argument("--json", action="store_true", help='{"summaries": [...], "thingSummaries": [...]}')
    mlc.set_defaults(func=cmd_ml)

    from garrison.detect.audit import cli as audit_cli  # the audit commands live with the audit
    audit_cli.add_parser(sub, db_anywhere)
    respond_cli.add_commands(command, actions_of, action)
    from garrison.detect.cli import metrics as metrics_cli   # the CLI's own modules (split later)
    metrics_cli.add_parser(command, actions_of, action)
    from garrison.detect.cli import dimensions as dimensions_cli
    dimensions_cli.add_parser(command, actions_of, action)

    for name, (_, help_text) in DELEGATED.items():
        delegated = sub.add_parser(name, help=help_text, add_help=False)
        delegated.add_argument("rest", nargs=argparse.REMAINDER)
        delegated.set_defaults(func=cmd_delegated)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in DELEGATED:  # everything after the name is the module's own
        return cmd_delegated(argparse.Namespace(command=argv[0], rest=argv[1:]))
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=args.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.func(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    except (StoreError, ProfileError, configuration.ConfigError, ActionError, AlertConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    except ValueError as exc:  # e.g. a bad broker URL, an unreadable token file
        print(f"{PROG}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{PROG}: {exc.strerror or exc}{': ' + exc.filename if getattr(exc, 'filename', None) else ''}",
              file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
