"""`garrison-detect serve`: parse the flags into the engine's config and run garrison.detect.service."""

import os

from garrison.detect import config as configuration
from garrison.detect.cli.common import TOKEN_ENV, UsageError, command


def add_parser(sub, db_parent) -> None:
    serve = command(sub, db_parent, "serve", "Run the engine: ingest reports from the broker, evaluate, alert, act.")
    serve.add_argument(
        "--broker",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT (user@ or user:pass@ "
        "allowed; a password there is visible in `ps`: prefer --broker-password-file)",
    )
    serve.add_argument("--broker-user", metavar="NAME", help="MQTT user name (default: the one in --broker)")
    serve.add_argument(
        "--broker-password-file",
        metavar="FILE",
        help="file whose first line is the MQTT password "
        "(else $GARRISON_BROKER_PASSWORD, else the URL's); never logged",
    )
    serve.add_argument("--config", help="engine configuration file (TOML or JSON; see docs/detect.md)")
    serve.add_argument(
        "--min-report-interval",
        type=float,
        metavar="SECONDS",
        help="accept one report per thing per this many seconds (default 300, as AWS)",
    )
    serve.add_argument(
        "--invalidation-period",
        metavar="DURATION",
        help='silence after which violations are invalidated (default "2d")',
    )
    serve.add_argument("--strict", action="store_true", help="accept reports only from pre-registered things")
    serve.add_argument("--dry-run", action="store_true", help="mitigation actions only log what they would do")
    serve.add_argument(
        "--broker-control",
        action="store_true",
        help="carry out quarantine, release, disable and "
        "enable through the broker's dynamic security plugin (broker-config --dynamic-security)",
    )
    serve.add_argument("--client-id", help="MQTT client id (default garrison-detect)")
    serve.add_argument("--ca", help="CA certificate for the broker's TLS")
    serve.add_argument("--cert", help="client certificate (mutual TLS)")
    serve.add_argument("--key", help="client private key (mutual TLS)")
    serve.add_argument(
        "--api-bind",
        metavar="HOST:PORT",
        help="serve the HTTP API here (default 127.0.0.1:8765 when a token is configured)",
    )
    serve.add_argument(
        "--api-token",
        metavar="TOKEN",
        help=f"API bearer token; ${TOKEN_ENV} or --api-token-file "
        "keep it out of `ps`. Without a token the API uses --api-token-file, generating it "
        "(mode 0600) if missing",
    )
    serve.add_argument("--api-token-file", metavar="FILE", help="file holding the API token (default DB.api-token)")
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve GET /metrics (Prometheus) without the "
        "API token ([api] metrics_public); the console is at /console on the API's address",
    )
    serve.add_argument(
        "--broker-log",
        metavar="FILE",
        help="Mosquitto's log file (broker-config --metrics-log): "
        "the source of the cloud-side metrics (aws:num-messages-sent, ...; docs/profiles.md)",
    )
    serve.add_argument(
        "--dead-letters",
        metavar="DIR",
        help="where reports that failed 3 times are set aside (default DB.dead-letters beside a "
        "SQLite --db; on PostgreSQL only logged unless given, and a report that kills the engine is "
        "recognised after a restart only with it: DIR/.inflight); bounded by [dead_letters] in the config "
        "(1000 files, 64 MiB): past that they are answered and acknowledged but not kept (logged)",
    )
    serve.add_argument(
        "--clock-offset",
        type=float,
        metavar="SECONDS",
        help="simulation only: run the engine's clock this many seconds ahead (e.g. 259200 to see "
        "three days of device silence now); also $GARRISON_CLOCK_OFFSET. Logged as a warning",
    )
    from garrison.detect.cli import scaleout

    scaleout.add_serve_arguments(serve)
    serve.set_defaults(func=run)
    scaleout.add_setup_command(sub, [db_parent])


def config_from(args) -> configuration.Config:
    """The config file (if any) with the command line's overrides."""
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
    if args.dead_letters:
        config.dead_letters_dir = args.dead_letters
    return config


def tls_files(args):
    files = (args.ca, args.cert, args.key)
    for path in files:
        if path and not os.path.isfile(path):
            raise UsageError(f"no such file: {path}")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together")
    return files if any(files) else None


def run(args) -> int:
    from garrison.detect.ops.broker_credentials import broker_credentials
    from garrison.detect.service import BrokerLink, Service

    from garrison.detect.state.store import is_postgres

    if args.nats:  # the scale-out deployment: NATS JetStream + PostgreSQL
        from garrison.detect.cli.scaleout import serve_nats

        return serve_nats(args)
    if not args.broker:
        raise UsageError("serve needs --broker mqtt://HOST:PORT (or --nats nats://... with a postgresql:// --db)")
    # everything that can be wrong with the command line or the config fails here, in one line,
    # before any thread or connection starts
    config = config_from(args)
    if is_postgres(args.db):
        from garrison.detect.cli.scaleout import check_api_token

        check_api_token(config)
    user, password = broker_credentials(args.broker, args.broker_user, args.broker_password_file)
    broker = BrokerLink(args.broker, user, password, tls_files(args))
    Service(
        args.db,
        broker,
        config,
        clock_offset_s=args.clock_offset,
        broker_control=args.broker_control,
        broker_log=args.broker_log,
    ).run()
    return 0
