"""The engine's configuration file for `garrison-detect serve` (TOML or JSON).

    invalidation_period = "2d"     # silence after which violations are alarm-invalidated
    sweep_interval = "60s"         # how often the sweep runs (invalidation, aws:disconnect-duration)
    disconnect_duration_unit = "1m"  # the unit of aws:disconnect-duration values (minutes, as AWS)
    fleet_stats_interval = "60s"   # how often statistical thresholds are recomputed
    fleet_min_devices = 5          # fewer devices in the window: no statistical threshold
    min_report_interval = 300      # AWS's throttle: one report per thing per 300 s
    strict = false                 # true: only pre-registered things (garrison-detect things add)
    dry_run = false                # true: mitigation actions only log what they would do
    client_id = "garrison-detect"  # MQTT client id (the session the broker keeps for us)

    [api]
    bind = "127.0.0.1:8765"
    token_file = "/etc/garrison/api-token"   # or token = "..."

    [alerts]                       # garrison.detect.respond.alerts.targets_from_config
    log = true
    mqtt = {topic = "garrison/alerts/{thing}", qos = 1}
    webhooks = ["https://ops.example/hooks/garrison"]

    [actions]                      # garrison.detect.respond.actions
    "SmartLock/no-new-ports" = {type = "add-thing-to-group", group = "quarantine"}

    [ml]                           # garrison.detect.judge.ml.MLConfig (training_days, min_datapoints, ...)
    training_days = 7

    [[profiles]]                   # applied (created or replaced) and attached at every start
    file = "profiles/fleet.json"   # a CreateSecurityProfile JSON; relative to this file
    attach = "all"                 # all | group:NAME | thing:NAME (optional)

Durations are seconds (a number) or a string with a unit: "45s", "30m", "12h", "2d".
Every mistake is reported as one line naming the key (ConfigError).
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore

DEFAULT_INVALIDATION_S = 2 * 86400
DEFAULT_API_BIND = "127.0.0.1:8765"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


@dataclass
class Config:
    invalidation_period_s: float = DEFAULT_INVALIDATION_S
    sweep_interval_s: float = 60.0
    disconnect_duration_unit_s: float = 60.0  # aws:disconnect-duration counts minutes, as on AWS
    fleet_stats_interval_s: float = 60.0
    fleet_min_devices: int = 5
    min_report_interval_s: float = 300.0
    strict: bool = False
    dry_run: bool = False
    client_id: str = "garrison-detect"
    api_bind: Optional[str] = None
    api_token: Optional[str] = None
    api_token_file: Optional[str] = None
    alerts: Any = None                      # None: log + MQTT on the engine's own connection
    actions: Dict[str, Any] = field(default_factory=dict)
    profiles: List[Tuple[str, Optional[str]]] = field(default_factory=list)  # (file, attach target)
    ml: Dict[str, Any] = field(default_factory=dict)                          # garrison.detect.judge.ml.MLConfig settings
    audit: Dict[str, Any] = field(default_factory=dict)                       # garrison.detect.audit.task sources

    @property
    def api_enabled(self) -> bool:
        return bool(self.api_bind or self.api_token or self.api_token_file)


def duration(value: Any, key: str) -> float:
    """Seconds from a number or "90s" / "30m" / "12h" / "2d"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise ConfigError(f"{key}: expected seconds or a duration like \"30m\" or \"2d\", got {value!r}")


def parse_bind(value: str, key: str = "api.bind"):
    """("host", port) from "HOST:PORT"."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT such as 127.0.0.1:8765, got {value!r}")
    return host.strip("[]"), int(port)


def _bool(doc: Mapping[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


_TOP_KEYS = {"invalidation_period", "sweep_interval", "disconnect_duration_unit", "fleet_stats_interval",
             "fleet_min_devices", "min_report_interval", "strict", "dry_run", "client_id", "api", "alerts",
             "actions", "profiles", "ml", "audit"}


def _profiles(items: Any, base: Path) -> List[Tuple[str, Optional[str]]]:
    if not isinstance(items, list):
        raise ConfigError("profiles: expected a list of tables [[profiles]] with file and attach")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("file"), str) or not item["file"]:
            raise ConfigError(f"profiles[{i}]: needs file = \"path/to/profile.json\"")
        unknown = set(item) - {"file", "attach"}
        if unknown:
            raise ConfigError(f"profiles[{i}]: unknown setting {sorted(unknown)[0]!r} (known: file, attach)")
        attach = item.get("attach")
        if attach is not None and (not isinstance(attach, str) or not attach):
            raise ConfigError(f"profiles[{i}].attach: expected all, group:NAME or thing:NAME")
        out.append((str(base / item["file"]), attach))
    return out


def from_dict(doc: Mapping[str, Any], base: Path = Path(".")) -> Config:
    if not isinstance(doc, Mapping):
        raise ConfigError("the configuration must be a table/object at the top level")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    config = Config()
    for key in ("invalidation_period", "sweep_interval", "disconnect_duration_unit", "fleet_stats_interval",
                "min_report_interval"):
        if key in doc:
            setattr(config, key + "_s", duration(doc[key], key))
    if config.sweep_interval_s <= 0 or config.fleet_stats_interval_s <= 0 or config.disconnect_duration_unit_s <= 0:
        raise ConfigError("sweep_interval, fleet_stats_interval and disconnect_duration_unit must be more than 0")
    devices = doc.get("fleet_min_devices", config.fleet_min_devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ConfigError(f"fleet_min_devices: expected a positive integer, got {devices!r}")
    config.fleet_min_devices = devices
    config.strict = _bool(doc, "strict", False)
    config.dry_run = _bool(doc, "dry_run", False)
    client_id = doc.get("client_id", config.client_id)
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"client_id: expected a non-empty string, got {client_id!r}")
    config.client_id = client_id
    api = doc.get("api", {})
    if not isinstance(api, Mapping):
        raise ConfigError("api: expected a table with bind, token or token_file")
    unknown = set(api) - {"bind", "token", "token_file"}
    if unknown:
        raise ConfigError(f"api: unknown setting {sorted(unknown)[0]!r} (known: bind, token, token_file)")
    for key in ("bind", "token", "token_file"):
        if key in api and (not isinstance(api[key], str) or not api[key]):
            raise ConfigError(f"api.{key}: expected a non-empty string")
    if "bind" in api:
        parse_bind(api["bind"])
    config.api_bind, config.api_token, config.api_token_file = api.get("bind"), api.get("token"), api.get("token_file")
    config.alerts = doc.get("alerts")
    actions = doc.get("actions", {})
    if not isinstance(actions, Mapping):
        raise ConfigError("actions: expected a table of \"<profile>/<behavior>\" = {type, group}")
    config.actions = dict(actions)
    config.profiles = _profiles(doc.get("profiles", []), base)
    ml = doc.get("ml", {})
    if not isinstance(ml, Mapping):
        raise ConfigError("ml: expected a table of ML Detect settings (training_days, min_datapoints, ...)")
    config.ml = dict(ml)
    if "audit" in doc:
        from garrison.detect.audit.task import AuditError, sources_from_config
        try:
            sources_from_config(doc["audit"])  # checked here, so `serve` fails at start, in one line
        except AuditError as exc:
            raise ConfigError(str(exc)) from None
        config.audit = dict(doc["audit"])
    return config


def load(path: str) -> Config:
    """Read a .toml or .json file (JSON if the text starts with "{")."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json") or text.lstrip().startswith("{"):
            doc = json.loads(text)
        else:
            doc = tomllib.loads(text)
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise ConfigError(f"config {path} is not valid {'JSON' if path.endswith('.json') else 'TOML'}: "
                          f"{str(exc).splitlines()[0]}") from None
    try:
        return from_dict(doc, Path(path).resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
