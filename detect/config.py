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
    broker_log = "/var/log/mosquitto/garrison-metrics.log"  # the cloud-side metrics' source
                                   # (broker-config --metrics-log; docs/profiles.md)
    cloud_metrics_interval = "60s" # how often the cloud-side metrics are evaluated
    metric_retention = "14d"       # metric history kept per thing (ListMetricValues)

    [api]
    bind = "127.0.0.1:8765"
    token_file = "/etc/garrison/api-token"   # or token = "..."
    metrics_public = false         # true: GET /metrics without the token (for Prometheus)

    [dead_letters]                 # reports set aside after failing 3 times (DB.dead-letters/)
    max_files = 1000               # when either cap is reached, new ones are answered and
    max_bytes = 67108864           # acknowledged but not kept (logged, counted)

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
The file is checked against `ConfigFile` (pydantic); every mistake is reported as one line
naming the key's path, e.g. `profiles[0].file: is required` (ConfigError).
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Tuple, Type

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
)

from garrison.detect.ingest.deadletter import MAX_BYTES as DEAD_LETTERS_MAX_BYTES
from garrison.detect.ingest.deadletter import MAX_FILES as DEAD_LETTERS_MAX_FILES
from garrison.detect.validation import field_path, message

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
    metrics_public: bool = False  # GET /metrics readable without the API token
    alerts: Any = None  # None: log + MQTT on the engine's own connection
    actions: Dict[str, Any] = field(default_factory=dict)
    profiles: List[Tuple[str, Optional[str]]] = field(default_factory=list)  # (file, attach target)
    ml: Dict[str, Any] = field(default_factory=dict)  # judge.ml.MLConfig settings
    audit: Dict[str, Any] = field(default_factory=dict)  # garrison.detect.audit.task sources
    broker_log: Optional[str] = None  # Mosquitto log file for the cloud-side metrics
    cloud_metrics_interval_s: float = 60.0  # how often the cloud-side metrics are evaluated
    metric_retention_s: float = 14 * 86400.0  # metric history kept for ListMetricValues
    dead_letters_dir: Optional[str] = None  # serve --dead-letters; None: DB.dead-letters beside SQLite
    dead_letters_max_files: int = DEAD_LETTERS_MAX_FILES
    dead_letters_max_bytes: int = DEAD_LETTERS_MAX_BYTES

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
    raise ConfigError(f'{key}: expected seconds or a duration like "30m" or "2d", got {value!r}')


def parse_bind(value: str, key: str = "api.bind"):
    """("host", port) from "HOST:PORT"."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT such as 127.0.0.1:8765, got {value!r}")
    return host.strip("[]"), int(port)


def _duration(key: str, positive: bool = False):
    def check(value: Any) -> float:
        seconds = duration(value, key)
        if not math.isfinite(seconds) or (positive and seconds <= 0):
            raise ConfigError(
                f"{key}: must be a finite number of seconds{' more than 0' if positive else ''}, got {value!r}"
            )
        return seconds

    return check


def _bind(value: str) -> str:
    parse_bind(value)
    return value


def _alerts(value: Any) -> Any:
    if value is not None and not isinstance(value, (dict, list)):
        raise ConfigError("alerts: expected a table (log, mqtt, webhooks) or a list of targets")
    return value


class _Section(BaseModel):
    # strict: "yes" is not true and "5" is not 5 (TOML has real types); unknown keys are mistakes
    model_config = ConfigDict(extra="forbid", strict=True)


NonEmpty = Annotated[str, Field(min_length=1)]


class ApiSection(_Section):
    bind: Optional[Annotated[NonEmpty, AfterValidator(_bind)]] = None
    token: Optional[NonEmpty] = None
    token_file: Optional[NonEmpty] = None
    metrics_public: StrictBool = False


class DeadLettersSection(_Section):
    max_files: StrictInt = Field(default=DEAD_LETTERS_MAX_FILES, ge=0)
    max_bytes: StrictInt = Field(default=DEAD_LETTERS_MAX_BYTES, ge=0)


class ProfileEntry(_Section):
    file: NonEmpty = Field(description="a CreateSecurityProfile JSON file, relative to the config file")
    attach: Optional[NonEmpty] = Field(None, description="all, group:NAME or thing:NAME")


class ConfigFile(_Section):
    """The file's schema. alerts, actions and ml are checked by their own modules
    (garrison.detect.respond.alerts / .actions, garrison.detect.judge.ml) when serve starts;
    audit by garrison.detect.audit.task here, so that `serve` fails at start, in one line."""

    invalidation_period: Annotated[float, BeforeValidator(_duration("invalidation_period"))] = DEFAULT_INVALIDATION_S
    sweep_interval: Annotated[float, BeforeValidator(_duration("sweep_interval", True))] = 60.0
    disconnect_duration_unit: Annotated[float, BeforeValidator(_duration("disconnect_duration_unit", True))] = 60.0
    fleet_stats_interval: Annotated[float, BeforeValidator(_duration("fleet_stats_interval", True))] = 60.0
    fleet_min_devices: StrictInt = Field(5, ge=1)
    min_report_interval: Annotated[float, BeforeValidator(_duration("min_report_interval"))] = 300.0
    strict: StrictBool = False
    dry_run: StrictBool = False
    client_id: NonEmpty = "garrison-detect"
    api: ApiSection = ApiSection()
    alerts: Annotated[Any, AfterValidator(_alerts)] = None
    actions: Dict[str, Any] = Field(default_factory=dict)
    profiles: List[ProfileEntry] = Field(default_factory=list)
    ml: Dict[str, Any] = Field(default_factory=dict)
    audit: Dict[str, Any] = Field(default_factory=dict)
    broker_log: Optional[NonEmpty] = Field(None, description="Mosquitto's log file, relative to the config file")
    cloud_metrics_interval: Annotated[float, BeforeValidator(_duration("cloud_metrics_interval", True))] = 60.0
    metric_retention: Annotated[float, BeforeValidator(_duration("metric_retention"))] = 14 * 86400.0  # 0: none
    dead_letters: DeadLettersSection = DeadLettersSection()


def _describe(exc: ValidationError) -> str:
    """One line naming the key: "api.bind: ...", "profiles[0].file: is required"."""
    error = exc.errors()[0]
    loc, kind = error.get("loc", ()), error.get("type")
    if kind == "extra_forbidden":
        where = loc[:-1]
        section: Type[BaseModel] = ConfigFile
        for part in where:  # the section the unknown key is in, for the list of known ones
            field = section.model_fields.get(part) if isinstance(part, str) else None
            annotation = getattr(field, "annotation", None)
            section = (
                annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel)
                else (ProfileEntry if part == "profiles" else section)
            )
        prefix = f"{field_path(where)}: " if where else ""
        return f"{prefix}unknown setting {loc[-1]!r} (known: {', '.join(section.model_fields)})"
    text = message(error)
    if kind == "value_error":
        return text if text.startswith(f"{field_path(loc)}:") else f"{field_path(loc)}: {text}"
    got = "" if kind == "missing" else f", got {error.get('input')!r}"
    return f"{field_path(loc)}: {text}{got}" if loc else text + got


def from_dict(doc: Mapping[str, Any], base: Path = Path(".")) -> Config:
    if not isinstance(doc, Mapping):
        raise ConfigError("the configuration must be a table/object at the top level")
    try:
        parsed = ConfigFile.model_validate(dict(doc))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    if "audit" in doc:
        from garrison.detect.audit.task import AuditError, sources_from_config

        try:
            sources_from_config(doc["audit"])
        except AuditError as exc:
            raise ConfigError(str(exc)) from None
    return Config(
        invalidation_period_s=parsed.invalidation_period,
        sweep_interval_s=parsed.sweep_interval,
        disconnect_duration_unit_s=parsed.disconnect_duration_unit,
        fleet_stats_interval_s=parsed.fleet_stats_interval,
        fleet_min_devices=parsed.fleet_min_devices,
        min_report_interval_s=parsed.min_report_interval,
        strict=parsed.strict,
        dry_run=parsed.dry_run,
        client_id=parsed.client_id,
        api_bind=parsed.api.bind,
        api_token=parsed.api.token,
        api_token_file=parsed.api.token_file,
        metrics_public=parsed.api.metrics_public,
        alerts=doc.get("alerts"),
        actions=dict(parsed.actions),
        ml=dict(parsed.ml),
        audit=dict(parsed.audit),
        profiles=[(str(base / entry.file), entry.attach) for entry in parsed.profiles],
        broker_log=str(base / parsed.broker_log) if parsed.broker_log else None,
        cloud_metrics_interval_s=parsed.cloud_metrics_interval,
        metric_retention_s=parsed.metric_retention,
        dead_letters_max_files=parsed.dead_letters.max_files,
        dead_letters_max_bytes=parsed.dead_letters.max_bytes,
    )


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
        raise ConfigError(
            f"config {path} is not valid {'JSON' if path.endswith('.json') else 'TOML'}: {str(exc).splitlines()[0]}"
        ) from None
    try:
        return from_dict(doc, Path(path).resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
