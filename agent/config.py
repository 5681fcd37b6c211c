"""Agent configuration: every option declared once.

Each `Option` carries its name, type, default, help, environment variable and validation. The
TOML loader, the environment reader, the argparse flags and docs/agent-configuration.md are all
derived from `OPTIONS`. Precedence, lowest to highest: defaults < TOML file < GARRISON_*
environment < command-line flags.

Regenerate the docs with `python3 -m garrison.agent.config > docs/agent-configuration.md`.
"""

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from garrison.agent.transports.paho_compat import parse_broker_url
from garrison.wire import names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9/3.10 devices
    import tomli as tomllib

ENV_PREFIX = "GARRISON_"
COLLECTORS = ("listening_tcp", "listening_udp", "connections", "network_stats", "posture")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class Option:
    """One configuration option.

    kind: "str", "int", "float", "bool", "list" (comma-separated on the command line and in
    the environment, an array in TOML), "path" (a string naming a file that must exist).
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    check: Optional[Callable[[Any], None]] = None  # raises ConfigError
    metavar: Optional[str] = None
    default_doc: Optional[str] = None  # for defaults computed at runtime
    commands: Tuple[str, ...] = ("run",)  # subcommands that take the flag

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _check_thing(value: str) -> None:
    if not names.valid_thing_name(value):  # AWS's rule; it also keeps MQTT wildcards out
        raise ConfigError(f"thing name {value!r} is invalid: {names.THING.text}")


def _check_broker(value: str) -> None:
    parse_broker(value)


def _check_posture(value: List[str]) -> None:
    from garrison.collectors.posture import CHECKS

    unknown = [name for name in value if name not in CHECKS]
    if unknown:
        raise ConfigError(f"unknown posture check {unknown[0]!r} (choose from {', '.join(CHECKS)})")


def _check_collectors(value: List[str]) -> None:
    unknown = [name for name in value if name not in COLLECTORS]
    if unknown:
        raise ConfigError(f"unknown collector {unknown[0]!r} (choose from {', '.join(COLLECTORS)})")


def parse_broker(url: str) -> Tuple[str, int, bool]:
    """(host, port, tls) from mqtt://HOST[:PORT] or mqtts://HOST[:PORT]."""
    try:
        host, port, tls, _, _ = parse_broker_url(url, credentials=False)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return host, port, tls


def default_thing() -> str:
    """The short hostname, with characters AWS forbids in thing names replaced by '-'."""
    return names.thing_name_from(socket.gethostname().split(".")[0])


def default_state_dir() -> str:
    """$STATE_DIRECTORY (systemd), else /var/lib/garrison-agent, else ~/.local/state/garrison-agent."""
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    system = Path("/var/lib/garrison-agent")
    # Checked without creating it: the Daemon creates the state directory when it runs.
    existing = system if system.is_dir() else system.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return str(system)
    return str(Path.home() / ".local" / "state" / "garrison-agent")


BOTH = ("run", "collect")

OPTIONS: Tuple[Option, ...] = (
    Option(
        "thing",
        "str",
        None,
        "Thing name: the topic's {thing} and the default MQTT client id.",
        check=_check_thing,
        metavar="NAME",
        default_doc="the short hostname",
    ),
    Option(
        "broker",
        "str",
        "mqtt://localhost:1883",
        "Broker URL: mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS (default port 8883).",
        check=_check_broker,
        metavar="URL",
    ),
    Option(
        "transport",
        "str",
        "mqtt",
        "How reports leave the device: mqtt (paho-mqtt), awsiot "
        "(AWS IoT Device SDK v2, extra 'aws'; needs mqtts:// with --cert and --key) or greengrass "
        "(Greengrass v2 IPC inside the io.garrison.Agent component, extra 'aws').",
        choices=("mqtt", "awsiot", "greengrass"),
    ),
    Option(
        "ca", "path", None, "CA bundle that signs the broker's certificate (TLS); system CAs if unset.", metavar="FILE"
    ),
    Option("cert", "path", None, "Client certificate for mutual TLS (PEM).", metavar="FILE"),
    Option("key", "path", None, "Private key of the client certificate (PEM).", metavar="FILE"),
    Option("client_id", "str", None, "MQTT client id.", default_doc="the thing name"),
    Option("username", "str", None, "MQTT user name (brokers with password authentication)."),
    Option("password", "str", None, "MQTT password; prefer the GARRISON_PASSWORD environment variable."),
    Option("mqtt_version", "str", "3.1.1", "MQTT protocol version.", choices=("3.1.1", "5")),
    Option("keepalive", "int", 60, "MQTT keepalive in seconds.", minimum=5, maximum=65535),
    Option(
        "interval",
        "float",
        300.0,
        "Seconds between reports (AWS accepts one per 300 s per thing).",
        minimum=0.01,
        metavar="SECONDS",
    ),
    Option(
        "jitter",
        "float",
        0.1,
        "Random spread of each interval, as a fraction of it (0.1 = ±10%), so a fleet does not report in lockstep.",
        minimum=0.0,
        maximum=0.5,
    ),
    Option("format", "str", "json", "Payload encoding.", choices=("json", "cbor"), commands=BOTH),
    Option("short_names", "bool", False, "Use Device Defender's short field names (hed, met, tp, ...).", commands=BOTH),
    Option(
        "state_dir",
        "str",
        None,
        "Directory for the last report id, the last interface counters and the spool.",
        metavar="DIR",
        commands=BOTH,
        default_doc="$STATE_DIRECTORY, else /var/lib/garrison-agent, else ~/.local/state/garrison-agent",
    ),
    Option(
        "log_level",
        "str",
        "info",
        "Log verbosity (debug shows each collector's duration).",
        choices=LOG_LEVELS,
        commands=BOTH,
    ),
    Option(
        "max_list_items",
        "int",
        500,
        "Cap on each list in a report (ports, connections); totals stay true.",
        minimum=1,
        maximum=100000,
        commands=BOTH,
    ),
    Option(
        "interfaces",
        "list",
        [],
        "Interfaces counted in network_stats (comma-separated); all if empty.",
        metavar="LIST",
        commands=BOTH,
    ),
    Option("include_loopback", "bool", False, "Count loopback traffic in network_stats.", commands=BOTH),
    Option(
        "collectors",
        "list",
        list(COLLECTORS),
        "Collectors to run (comma-separated): " + ", ".join(COLLECTORS) + ".",
        check=_check_collectors,
        metavar="LIST",
        commands=BOTH,
    ),
    Option(
        "disable_collector",
        "list",
        [],
        "Collectors not to run (comma-separated or repeated); wins over --collectors.",
        check=_check_collectors,
        metavar="NAME",
        commands=BOTH,
    ),
    Option(
        "posture_checks",
        "list",
        ["services", "ssh", "accounts", "path", "sysctl"],
        "Checks of the "
        "posture collector (custom metrics posture:*; see docs/audit.md): services, ssh, accounts "
        "(needs root), path, sysctl.",
        check=_check_posture,
        metavar="LIST",
        commands=BOTH,
    ),
    Option(
        "socket_backend",
        "str",
        "auto",
        "How sockets are read: auto (netlink sock_diag, falling back to /proc), netlink or procfs.",
        choices=("auto", "netlink", "procfs"),
        commands=BOTH,
    ),
    Option(
        "socket_events",
        "str",
        "auto",
        "Watch TCP/UDP sockets closing between reports (netlink "
        "sock_diag destroy events), so a beacon or a listener that lives between two reports is still "
        "reported: on, off, or auto (on, except where reports go to AWS IoT Core and fold_interval_"
        "connections is off). The interval_sockets extension is only sent to Garrison engines.",
        choices=("auto", "on", "off"),
    ),
    Option(
        "socket_events_max",
        "int",
        256,
        "Most distinct remote addresses, and most listening ports, "
        "kept per interval by the socket-event collector; the rest are counted as overflow.",
        minimum=1,
        maximum=1000,
    ),
    Option(
        "fold_interval_connections",
        "bool",
        False,
        "Add the interval's TCP remote endpoints to the "
        "established-connections list (works on AWS IoT too), so aws:destination-ip-addresses sees "
        "connections that closed between reports; aws:num-established-tcp-connections then counts "
        "them as well.",
    ),
    Option(
        "socket_owners",
        "str",
        "auto",
        "Name the process (pid, name, executable, user) behind each "
        "listening port and connection in the socket_owners extension: auto or on (Garrison engines "
        "only; never sent to AWS IoT Core), or off.",
        choices=("auto", "on", "off"),
    ),
    Option(
        "spool_max_reports",
        "int",
        1000,
        "Most reports kept while the broker is unreachable; the oldest are dropped (and counted) beyond it.",
        minimum=1,
    ),
    Option("spool_max_bytes", "int", 16 * 1024 * 1024, "Most bytes of spooled reports.", minimum=1024),
    Option(
        "spool_max_age",
        "float",
        7 * 86400.0,
        "Spooled reports older than this many seconds are dropped.",
        minimum=1.0,
        metavar="SECONDS",
    ),
    Option(
        "publish_timeout",
        "float",
        10.0,
        "Seconds to wait for the broker's acknowledgement (PUBACK).",
        minimum=0.1,
        metavar="SECONDS",
    ),
    Option(
        "reply_timeout",
        "float",
        30.0,
        "Seconds to wait for a report's accepted/rejected reply "
        "(`run` then sends it again later, with backoff; `run --once` gives up).",
        minimum=0.1,
        metavar="SECONDS",
    ),
    Option(
        "control",
        "bool",
        True,
        "Listen for the engine's reconfiguration requests on the thing's control "
        "topic (report now, report more often for a while, collectors off/on; MQTT transport only). Requests "
        "outside the control_* limits are refused and logged; nothing runs commands.",
    ),
    Option(
        "control_min_interval",
        "float",
        10.0,
        "Shortest interval a control request may set, and the least time between two report-now requests.",
        minimum=1.0,
        maximum=3600.0,
        metavar="SECONDS",
    ),
    Option(
        "control_max_duration",
        "float",
        3600.0,
        "Longest a control request's temporary interval lasts.",
        minimum=1.0,
        maximum=86400.0,
        metavar="SECONDS",
    ),
    Option(
        "control_collectors",
        "list",
        [],
        "Collectors a control request may turn off and on again (comma-separated); none if empty.",
        check=_check_collectors,
        metavar="LIST",
    ),
)
BY_NAME: Dict[str, Option] = {opt.name: opt for opt in OPTIONS}


def _convert(opt: Option, value: Any, source: str, text: bool = True) -> Any:
    """Coerce and validate one value; `source` names where it came from, for the error
    (a flag, an environment variable, or "FILE: key"). `text`: strings may stand for numbers,
    booleans and lists (flags, environment); TOML values must have the right type."""
    where = source
    if not text and isinstance(value, str) and opt.kind not in ("str", "path"):
        raise ConfigError(f"{where} must be {_KIND_NAMES[opt.kind]}, got the string {value!r}")
    if opt.kind == "bool":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                value = True
            elif lowered in ("0", "false", "no", "off", ""):
                value = False
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif opt.kind in ("int", "float"):
        number_type = int if opt.kind == "int" else float
        if isinstance(value, str):
            try:
                value = number_type(value.strip())
            except ValueError:
                raise ConfigError(
                    f"{where} must be {'an integer' if opt.kind == 'int' else 'a number'}, got {value!r}"
                ) from None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (opt.kind == "int" and not isinstance(value, int))
        ):
            raise ConfigError(f"{where} must be {'an integer' if opt.kind == 'int' else 'a number'}, got {value!r}")
        value = number_type(value)
        if opt.minimum is not None and value < opt.minimum:
            raise ConfigError(f"{where} must be at least {opt.minimum}, got {value}")
        if opt.maximum is not None and value > opt.maximum:
            raise ConfigError(f"{where} must be at most {opt.maximum}, got {value}")
    elif opt.kind == "list":
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where} must be a list of names, got {value!r}")
    else:  # str, path
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
        if opt.choices and value not in opt.choices:
            raise ConfigError(f"{where} must be one of {', '.join(opt.choices)}, got {value!r}")
        if opt.kind == "path" and not os.path.isfile(value):
            raise ConfigError(f"{where}: file {value!r} does not exist")
        if opt.kind == "path" and not os.access(value, os.R_OK):
            raise ConfigError(f"{where}: file {value!r} is not readable")
    if opt.check:
        try:
            opt.check(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return value


_KIND_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number", "list": "a list"}


class Config:
    """The effective configuration: attribute access by option name (`config.interval`).

    The annotations give mypy each option's type; tests/agent/test_config.py checks they match
    OPTIONS (thing, client_id and state_dir are always set by load())."""

    thing: str
    broker: str
    transport: str
    ca: Optional[str]
    cert: Optional[str]
    key: Optional[str]
    client_id: str
    username: Optional[str]
    password: Optional[str]
    mqtt_version: str
    keepalive: int
    interval: float
    jitter: float
    format: str
    short_names: bool
    state_dir: str
    log_level: str
    max_list_items: int
    interfaces: List[str]
    include_loopback: bool
    collectors: List[str]
    disable_collector: List[str]
    posture_checks: List[str]
    socket_backend: str
    socket_events: str
    socket_events_max: int
    fold_interval_connections: bool
    socket_owners: str
    spool_max_reports: int
    spool_max_bytes: int
    spool_max_age: float
    publish_timeout: float
    reply_timeout: float
    control: bool
    control_min_interval: float
    control_max_duration: float
    control_collectors: List[str]

    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    @property
    def enabled_collectors(self) -> List[str]:
        return [name for name in COLLECTORS if name in self.collectors and name not in self.disable_collector]

    @property
    def broker_address(self) -> Tuple[str, int, bool]:
        return parse_broker(self.broker)

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "password" and v else v) for k, v in self.__dict__.items()}
        return f"Config({shown})"


def read_toml(path: str) -> Dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None


def load(
    config_file: Optional[str] = None,
    flags: Optional[Mapping[str, Any]] = None,
    environ: Optional[Mapping[str, str]] = None,
    **overrides: Any,
) -> Config:
    """Merge defaults, the TOML file, GARRISON_* variables, flags and keyword overrides, validated.

    `flags` holds only the options given on the command line; keyword overrides (the library
    API) win over everything.
    """
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    layers: List[Tuple[str, Mapping[str, Any]]] = []
    if config_file:
        data = read_toml(config_file)
        for key in data:
            if key not in BY_NAME:
                raise ConfigError(f"{config_file}: unknown option {key!r}")
        layers.append((config_file, data))
    layers.append(("environment", {opt.name: environ[opt.env] for opt in OPTIONS if opt.env in environ}))
    layers.append(("command line", dict(flags or {})))
    unknown = [key for key in overrides if key not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}")
    layers.append(("arguments", overrides))

    values: Dict[str, Any] = {
        opt.name: (list(opt.default) if isinstance(opt.default, list) else opt.default) for opt in OPTIONS
    }
    for source, layer in layers:
        for name, value in layer.items():
            if value is None:
                continue
            opt = BY_NAME[name]
            label = {"environment": opt.env, "command line": opt.flag}.get(source, f"{source}: {name}")
            values[name] = _convert(opt, value, label, text=source in ("environment", "command line"))
    values["thing"] = values["thing"] or default_thing()
    _check_thing(values["thing"])
    values["client_id"] = values["client_id"] or values["thing"]
    values["state_dir"] = values["state_dir"] or default_state_dir()
    _check_consistency(values)
    return Config(values)


def _check_consistency(values: Mapping[str, Any]) -> None:
    """Rules that involve more than one option."""
    _, _, tls = parse_broker(values["broker"])
    if bool(values["cert"]) != bool(values["key"]):
        raise ConfigError("--cert and --key go together (mutual TLS needs both)")
    if (values["cert"] or values["ca"]) and not tls:
        raise ConfigError(f"--ca/--cert/--key need a TLS broker URL (mqtts://), got {values['broker']!r}")
    if values["transport"] == "awsiot" and not (tls and values["cert"]):
        raise ConfigError("transport awsiot needs an mqtts:// broker and --cert/--key")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line on stderr and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add a flag per option that `command` takes; flags not given stay out of the namespace."""
    for opt in OPTIONS:
        if command not in opt.commands:
            continue
        default = opt.default_doc or (",".join(opt.default) if isinstance(opt.default, list) else opt.default)
        text = f"{opt.help} [env {opt.env}; default: {default}]".replace("%", "%%")
        common: Dict[str, Any] = dict(dest=opt.name, default=argparse.SUPPRESS, help=text)
        if opt.kind == "bool":
            parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **common)
        elif opt.kind == "list":
            parser.add_argument(opt.flag, action=_ListAction, metavar=opt.metavar, **common)
        else:
            parser.add_argument(
                opt.flag,
                metavar=opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else opt.name.upper()),
                **common,
            )


class _ListAction(argparse.Action):
    """Comma-separated values; repeating the flag adds to the list."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        items = [item.strip() for item in values.split(",") if item.strip()]
        setattr(namespace, self.dest, (current if isinstance(current, list) else []) + items)


def flags_from(namespace: argparse.Namespace) -> Dict[str, Any]:
    """The options given on the command line, from a parsed namespace."""
    return {name: value for name, value in vars(namespace).items() if name in BY_NAME}


def markdown() -> str:
    """docs/agent-configuration.md, derived from OPTIONS."""
    lines = [
        "# Agent configuration",
        "",
        "<!-- Generated by `python3 -m garrison.agent.config > docs/agent-configuration.md`; edit agent/config.py. -->",
        "",
        "`garrison-agent` reads its options from, lowest precedence first: built-in defaults, a TOML",
        "file (`--config FILE` or `GARRISON_CONFIG`), `GARRISON_*` environment variables, then",
        "command-line flags. Unknown keys, wrong types, bad URLs, missing certificate files and bad",
        "thing names are refused with one error line on stderr and exit code 2.",
        "",
        "Lists are comma-separated on the command line and in the environment, arrays in TOML.",
        "Booleans take `--flag` / `--no-flag`, and `true`/`false`/`1`/`0` in the environment.",
        "",
        "| TOML key | flag | environment | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for opt in OPTIONS:
        default = opt.default_doc or (", ".join(opt.default) if isinstance(opt.default, list) else opt.default)
        kind = opt.kind + (" (" + " \\| ".join(opt.choices) + ")" if opt.choices else "")
        if opt.minimum is not None or opt.maximum is not None:
            low = opt.minimum if opt.minimum is not None else ""
            high = opt.maximum if opt.maximum is not None else ""
            kind += f", {low}–{high}"
        if opt.default_doc:
            shown = opt.default_doc
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default}`" if default not in (None, "") else "unset"
        lines.append(f"| `{opt.name}` | `{opt.flag}` | `{opt.env}` | {kind} | {shown} | {opt.help} |")
    lines += [
        "",
        "## Example `/etc/garrison/agent.toml`",
        "",
        "```toml",
        'thing = "pump-17"',
        'broker = "mqtts://iot.example.net:8883"',
        'ca = "/etc/garrison/ca.crt"',
        'cert = "/etc/garrison/pump-17.crt"',
        'key = "/etc/garrison/pump-17.key"',
        "interval = 300",
        'format = "cbor"',
        "short_names = true",
        'disable_collector = ["connections"]',
        "```",
        "",
        "## Network deltas",
        "",
        "`network_stats` carries the traffic since the previous report, summed over the counted",
        "interfaces. The last counters are kept in `STATE_DIR/counters.json` (written atomically), so",
        "deltas continue across agent restarts. The first report after a fresh state directory has",
        "zero deltas. A counter that goes backwards (reboot, interface re-created, 32-bit wrap) or a",
        "changed kernel boot id makes that interface contribute **0** for that round and resets its",
        "baseline: at most one interval of that interface's traffic is missed, and no spike is ever",
        "reported. An interface seen for the first time also contributes 0 in its first round.",
        "`garrison-agent collect` only reads the state directory: it shows the deltas since the running",
        "agent's last report without moving its baseline or report id.",
        "",
        "## Spool",
        "",
        "Every report is written to `STATE_DIR/spool/` (one file per report, atomically, mode 0600 in",
        "a 0700 directory) before it is published. It leaves the spool only with an answer that",
        "settles it: `/accepted`, or a rejection that resending cannot fix (`InvalidPayload`,",
        "`PayloadTooLarge`, `InvalidThingName`, `StaleReportId`, `UnregisteredThing`, `Throttled`, or",
        "a code the agent does not know), which is logged with the word `dropped`. A report answered",
        "`InternalError` (the engine could not record it), or not answered within `reply_timeout`,",
        "stays and is sent again later with exponential backoff (2 s doubling to 300 s). Reports go one",
        "at a time, oldest first, each after the previous one's answer, so the engine sees ids in",
        "order. `Throttled` is not retried: sent again at once it is throttled again, and holding it",
        "would hold up every newer report. The agent therefore needs its reply topics: without replies",
        "a report is resent until the spool's bounds drop it. While the broker is unreachable",
        "reports accumulate and are sent in order when the link returns; a `kill -9` at any moment",
        "leaves a readable spool. Beyond `spool_max_reports`, `spool_max_bytes` or `spool_max_age` the",
        "oldest reports are dropped; drops are logged and the next report carries the count as the",
        "custom metric `garrison:spool_dropped`. When the state directory cannot be written (a full",
        "disk) the agent still sends each report it builds, held in memory (at most 16), and logs once",
        "that spooling is off and once that it is back. Delivery is at least once: a report may be",
        "sent again after a lost reply (the engine answers `accepted` again and does not count it",
        "twice). AWS IoT accepts one report per thing per 300 s as they arrive: a backlog sent after",
        "an outage is partly answered with `Throttled`.",
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "|---|---|",
        "| 0 | success (`run --once`: the report was accepted; `run`: stopped by SIGTERM/SIGINT) |",
        "| 1 | `run --once`: the report was rejected for good (the error code is logged; it left the spool) |",
        "| 2 | bad configuration or usage |",
        "| 3 | `run --once`: not settled: no reply in time, the broker was unreachable, or `InternalError` (the report stays spooled; the next run sends it first) |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
