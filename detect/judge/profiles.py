"""Security profiles in the shape of AWS's CreateSecurityProfile, validated as AWS validates them.

`load_profile(doc)` takes the request JSON unchanged (or a path to a file holding it, as given to
`aws iot create-security-profile --cli-input-json file://...`) and returns a `SecurityProfile`
whose behaviors carry their resolved metric spec and parsed criterion, ready for
`garrison.detect.judge.evaluate.step`. Anything AWS would refuse raises `ProfileError` naming the behavior and
field. Fields we do not use (alertTargets, tags, metricDimension, exportMetric, ...) are kept,
and `SecurityProfile.to_dict()` gives the document back as it was given.
"""

import copy
import ipaddress
import json
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from garrison.detect.judge import metrics
from garrison.detect.judge.metrics import MetricError, MetricSpec
from garrison.wire import names

MAX_BEHAVIORS = 100
MAX_DESCRIPTION = 1000
DURATIONS = (300, 600, 900, 1800, 3600)
STATISTICS = (
    "p0",
    "p0.1",
    "p0.01",
    "p1",
    "p10",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "p99.99",
    "p100",
    "Average",
)  # "Average" is in AWS's enum too (the mean of the population)
CONFIDENCE_LEVELS = ("LOW", "MEDIUM", "HIGH")
VALUE_KEYS = ("count", "cidrs", "ports", "number", "numbers", "strings")
DIMENSION_OPERATORS = ("IN", "NOT_IN")
CONSECUTIVE_RANGE = (1, 10)
MAX_COUNT = 2**63 - 1  # AWS types count as a long


class ProfileError(ValueError):
    """A profile AWS would refuse. `behavior` and `field` say where (None at profile level)."""

    def __init__(self, message: str, behavior: Optional[str] = None, field: Optional[str] = None):
        where = ""
        if behavior is not None:
            where = f"behavior {behavior!r}: "
        if field:
            where += f"{field}: "
        super().__init__(where + message)
        self.behavior = behavior
        self.field = field


class CidrSet:
    """A set of CIDRs with a fast `contains(address)`, the parsed form of a `cidrs` value.

    Per IP version, a table prefix length -> set of network numbers (address >> host bits), so
    one lookup per distinct prefix length decides; results are memoised (bounded) because
    fleets talk to the same few servers over and over.
    """

    _MEMO_LIMIT = 65536

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = tuple(texts)
        self._tables: Dict[int, Dict[int, set]] = {4: {}, 6: {}}
        for text in self.texts:
            net = ipaddress.ip_network(text, strict=False)
            bits = net.max_prefixlen
            self._tables[net.version].setdefault(net.prefixlen, set()).add(
                int(net.network_address) >> (bits - net.prefixlen)
            )
        self._memo: Dict[str, bool] = {}

    def __eq__(self, other):
        return isinstance(other, CidrSet) and set(self.texts) == set(other.texts)

    def __hash__(self):
        return hash(frozenset(self.texts))

    def __repr__(self):
        return f"CidrSet({list(self.texts)!r})"

    def contains(self, text: str) -> bool:
        """Whether address (or network) `text` lies inside one of the CIDRs; False if unparsable."""
        found = self._memo.get(text)
        if found is None:
            found = self._lookup(text)
            if len(self._memo) >= self._MEMO_LIMIT:
                self._memo.clear()
            self._memo[text] = found
        return found

    def _lookup(self, text: str) -> bool:
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                version, address, own_prefix = net.version, int(net.network_address), net.prefixlen
            elif ":" in text:
                version, address, own_prefix = 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"), 128
            else:
                version, address, own_prefix = 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"), 32
        except (ValueError, OSError):
            return False
        bits = 32 if version == 4 else 128
        for prefix, networks in self._tables[version].items():
            if prefix <= own_prefix and (address >> (bits - prefix)) in networks:
                return True
        return False


@dataclass(eq=False)
class Behavior:
    """One behavior, its raw AWS form kept in `doc`.

    kind: "rule" (operator and value), "statistical" (operator and fleet percentile),
    "ml" (mlDetectionConfig; verdicts come from garrison.detect.judge.ml) or "retain" (no criteria: the metric is
    only recorded).
    criterion: the value parsed for evaluation: a number (count/number), a frozenset (ports,
    numbers, strings) or a `CidrSet` (cidrs); None without a value.
    """

    name: str
    metric: str
    spec: MetricSpec
    kind: str
    operator: Optional[str]
    value: Optional[Dict[str, Any]]
    criterion: Any
    duration_seconds: Optional[int]
    consecutive_to_alarm: int
    consecutive_to_clear: int
    statistic: Optional[str]
    confidence_level: Optional[str]
    suppress_alerts: bool
    export_metric: bool
    metric_dimension: Optional[Dict[str, Any]]
    doc: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(self.doc)


@dataclass(eq=False)
class SecurityProfile:
    name: str
    description: str
    behaviors: List[Behavior]
    alert_targets: Dict[str, Any]
    additional_metrics: List[Dict[str, Any]]
    tags: List[Dict[str, Any]]
    doc: Dict[str, Any] = field(repr=False)

    def behavior(self, name: str) -> Behavior:
        for behavior in self.behaviors:
            if behavior.name == name:
                return behavior
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        """The profile document as given (round-trips through load_profile)."""
        return copy.deepcopy(self.doc)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_name(value: Any, what: str, behavior: Optional[str] = None, fld: Optional[str] = None) -> str:
    if not names.NAME.valid(value):  # profile, behavior, metric and dimension names alike
        raise ProfileError(f"{what} must be {names.SHAPE}, got {value!r}", behavior, fld)
    return value


def _parse_value(value: Any, spec: MetricSpec, name: str) -> Tuple[Dict[str, Any], Any]:
    """Check the criteria value against the metric's type; return (raw, parsed criterion)."""
    fld = "criteria.value"
    if not isinstance(value, Mapping):
        raise ProfileError('must be an object such as {"count": 10}', name, fld)
    keys = [k for k in value if value[k] is not None]
    unknown = [k for k in keys if k not in VALUE_KEYS]
    if unknown:
        raise ProfileError(f"unknown key {unknown[0]!r} (expected one of {', '.join(VALUE_KEYS)})", name, fld)
    if len(keys) != 1:
        raise ProfileError(f"must hold exactly one of {', '.join(VALUE_KEYS)}, got {keys or 'none'}", name, fld)
    key = keys[0]
    if key != spec.value_type:
        raise ProfileError(f"metric {spec.id} takes a {spec.value_type!r} value, not {key!r}", name, fld)
    raw = value[key]
    fld = f"{fld}.{key}"
    if key == "count":
        # AWS's API types count as a long; CloudFormation as a string of digits: take both.
        if isinstance(raw, str) and raw.isascii() and raw.isdigit():
            raw_count = int(raw)
        elif _is_int(raw):
            raw_count = raw
        else:
            raise ProfileError(f"must be a non-negative integer, got {raw!r}", name, fld)
        if not 0 <= raw_count <= MAX_COUNT:
            raise ProfileError(f"must be a non-negative integer up to {MAX_COUNT}, got {raw!r}", name, fld)
        return dict(value), raw_count
    if key == "number":
        if not _is_number(raw):
            raise ProfileError(f"must be a finite number, got {raw!r}", name, fld)
        return dict(value), raw
    if not isinstance(raw, list):
        raise ProfileError(f"must be a list, got {raw!r}", name, fld)
    if key == "ports":
        for i, port in enumerate(raw):
            if not _is_int(port) or not 0 <= port <= 65535:
                raise ProfileError(f"{port!r} is not a port (0-65535)", name, f"{fld}[{i}]")
        return dict(value), frozenset(raw)
    if key == "numbers":
        for i, number in enumerate(raw):
            if not _is_number(number):
                raise ProfileError(f"{number!r} is not a finite number", name, f"{fld}[{i}]")
        return dict(value), frozenset(raw)
    if key == "strings":
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                raise ProfileError(f"{text!r} is not a string", name, f"{fld}[{i}]")
        return dict(value), frozenset(raw)
    for i, text in enumerate(raw):
        try:
            if not isinstance(text, str):
                raise ValueError
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ProfileError(
                f"{text!r} is not a CIDR such as 192.0.2.0/24 or 2001:db8::/32", name, f"{fld}[{i}]"
            ) from None
    return dict(value), CidrSet(raw)


def parse_behavior(doc: Mapping[str, Any], custom_metric_types: Optional[Mapping[str, str]] = None) -> Behavior:
    """One behavior, already shaped by profile_schema.Behavior (load_profile checks that first):
    here, what depends on the metric. `custom_metric_types` maps custom metric names to declared types."""
    name = doc["name"]
    metric_id = doc["metric"]
    criteria = doc.get("criteria") or {}
    declared = (custom_metric_types or {}).get(metric_id)
    try:
        spec = metrics.spec_for(metric_id, criteria, declared_type=declared)
    except MetricError as exc:
        raise ProfileError(str(exc), name, "metric") from None

    operator = criteria.get("comparisonOperator")
    value = criteria.get("value")
    statistical = criteria.get("statisticalThreshold")
    ml_config = criteria.get("mlDetectionConfig")
    duration = criteria.get("durationSeconds")
    statistic = confidence = None

    if ml_config is not None:
        kind = "ml"
        confidence = ml_config["confidenceLevel"]
        for key, present in (("comparisonOperator", operator), ("value", value), ("statisticalThreshold", statistical)):
            if present is not None:
                raise ProfileError("cannot be used with mlDetectionConfig", name, f"criteria.{key}")
        if not (spec.id in metrics.ML_METRICS or (spec.custom and spec.value_type == "number")):
            raise ProfileError(
                f"ML Detect supports only {', '.join(metrics.ML_METRICS)} and custom number metrics, not {spec.id}",
                name,
                "criteria.mlDetectionConfig",
            )
    elif statistical is not None:
        kind = "statistical"
        statistic = statistical["statistic"]
        if value is not None:
            raise ProfileError("cannot be used with statisticalThreshold", name, "criteria.value")
        if not spec.numeric:
            raise ProfileError(
                f"statistical thresholds need a numeric metric; {spec.id} is a {spec.value_type} metric",
                name,
                "criteria.statisticalThreshold",
            )
        if spec.id in metrics.SILENCE_METRICS:  # AWS: Rules Detect only
            raise ProfileError(
                f"{spec.id} takes only a comparisonOperator and a value (a rule)", name, "criteria.statisticalThreshold"
            )
        if operator is None:
            raise ProfileError("is required with statisticalThreshold", name, "criteria.comparisonOperator")
    elif operator is not None or value is not None:
        kind = "rule"
        if operator is None:
            raise ProfileError("is required with a value", name, "criteria.comparisonOperator")
        if value is None:
            raise ProfileError("is required with a comparisonOperator", name, "criteria.value")
    else:
        kind = "retain"

    if operator is not None and operator not in spec.operators:
        raise ProfileError(
            f"{operator!r} does not apply to {spec.id} ({spec.value_type}); use one of {', '.join(spec.operators)}",
            name,
            "criteria.comparisonOperator",
        )
    raw_value, criterion = (None, None) if value is None else _parse_value(value, spec, name)

    if duration is not None and not spec.numeric:
        raise ProfileError(
            f"cannot be used with list metric {spec.id} ({spec.value_type})", name, "criteria.durationSeconds"
        )
    dimension = doc.get("metricDimension")
    if dimension is not None and spec.custom:
        raise ProfileError("dimensions cannot be used with custom metrics", name, "metricDimension")
    if dimension is not None and spec.id not in metrics.DIMENSION_METRICS:  # as AWS
        raise ProfileError(
            f"dimensions apply only to {', '.join(metrics.DIMENSION_METRICS)}, not {spec.id}", name, "metricDimension"
        )

    return Behavior(
        name=name,
        metric=metric_id,
        spec=spec,
        kind=kind,
        operator=operator,
        value=raw_value,
        criterion=criterion,
        duration_seconds=duration,
        consecutive_to_alarm=criteria.get("consecutiveDatapointsToAlarm", 1),
        consecutive_to_clear=criteria.get("consecutiveDatapointsToClear", 1),
        statistic=statistic,
        confidence_level=confidence,
        suppress_alerts=doc.get("suppressAlerts", False),
        export_metric=doc.get("exportMetric", False),
        metric_dimension=None if dimension is None else dict(dimension),
        doc=copy.deepcopy(dict(doc)),
    )


def _check_additional_metrics(items: Optional[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """AWS metrics named in additionalMetricsToRetainV2 must exist (the shape is the schema's)."""
    for i, item in enumerate(items or []):
        if str(item["metric"]).startswith("aws:"):
            try:
                metrics.spec_for(item["metric"])
            except MetricError as exc:
                raise ProfileError(str(exc), None, f"additionalMetricsToRetainV2[{i}].metric") from None
    return [dict(item) for item in items or []]


def _read(source: Union[Mapping[str, Any], str, Path]) -> Dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, Path)):
        raise ProfileError(
            f"a profile must be a JSON object (a CreateSecurityProfile request), got {type(source).__name__}"
        )
    path = Path(str(source)[len("file://") :] if str(source).startswith("file://") else source)
    shown = str(path) if str(path).isprintable() else repr(str(path))  # errors stay one line
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read {shown}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ProfileError(f"{shown} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProfileError(f"{shown} nests too deeply to be a profile") from None
    if not isinstance(doc, Mapping):
        raise ProfileError(f"{shown} must hold a JSON object (a CreateSecurityProfile request)")
    return dict(doc)


def _check_shape(doc: Dict[str, Any]) -> None:
    """profile_schema.ProfileDocument over the document: a ProfileError naming behavior and field."""
    from pydantic import ValidationError

    from garrison.detect.judge.profile_schema import ProfileDocument  # imports this module's constants
    from garrison.detect.validation import field_path, message

    try:
        ProfileDocument.model_validate(doc)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc, kind = tuple(error.get("loc", ())), error.get("type")
        text = "unknown criteria field" if kind == "extra_forbidden" else message(error)
        if kind not in ("value_error", "missing", "extra_forbidden"):
            text += f", got {error.get('input')!r}"
        if loc == ("securityProfileName",):
            raise ProfileError(text) from None
        if len(loc) >= 3 and loc[0] == "behaviors" and loc[2] != "name":
            named = doc["behaviors"][loc[1]].get("name")
            if names.NAME.valid(named):
                raise ProfileError(text, named, field_path(loc[2:])) from None
        raise ProfileError(text, None, field_path(loc)) from None


def load_profile(
    source: Union[Mapping[str, Any], str, Path], custom_metric_types: Optional[Mapping[str, str]] = None
) -> SecurityProfile:
    """A validated profile from a CreateSecurityProfile document, or a path to a JSON file of one.

    `custom_metric_types` (name -> AWS metricType such as "number-list") types custom metrics that
    behaviors without a value (statistical, ML) would otherwise take as "number".
    """
    doc = _read(source)
    _check_shape(doc)
    name = _check_name(doc.get("securityProfileName"), "securityProfileName", None, None)  # required here
    description = doc.get("securityProfileDescription", "")
    raw_behaviors = doc.get("behaviors", [])
    behaviors: List[Behavior] = []
    seen = set()
    for raw in raw_behaviors:
        behavior = parse_behavior(raw, custom_metric_types)
        if behavior.name in seen:
            raise ProfileError("behavior names must be unique within a profile", behavior.name, "name")
        seen.add(behavior.name)
        behaviors.append(behavior)
    alert_targets = doc.get("alertTargets") or {}
    tags = doc.get("tags") or []
    return SecurityProfile(
        name=name,
        description=description,
        behaviors=behaviors,
        alert_targets=dict(alert_targets),
        additional_metrics=_check_additional_metrics(doc.get("additionalMetricsToRetainV2")),
        tags=list(tags),
        doc=copy.deepcopy(doc),
    )
