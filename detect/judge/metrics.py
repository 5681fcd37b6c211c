"""The metric catalogue, declared once: id, value type, operators, delta or not, where it comes from.

Reports reach the engine already validated and in long names (`garrison.wire.schema`), so each
extractor reads long keys only. An extractor returns None when the report does not carry the
metric: that is "no datapoint", not zero.

Value types and the Python values their extractors return:
  count    int                      (device counts and network_stats deltas; AWS's MetricValue `count`)
  number   int | float              (custom `number`)
  ports    sorted list of ints      (listening ports, duplicates removed)
  cidrs    sorted list of IP strings (destination addresses, custom `ip_list`)
  numbers  list of numbers          (custom `number_list`)
  strings  list of strings          (custom `string_list`)
"""

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

NUMERIC_OPERATORS = ("less-than", "less-than-equals", "greater-than", "greater-than-equals")
OPERATORS: Dict[str, Tuple[str, ...]] = {
    "count": NUMERIC_OPERATORS,
    "number": NUMERIC_OPERATORS,
    "ports": ("in-port-set", "not-in-port-set"),
    "cidrs": ("in-cidr-set", "not-in-cidr-set"),
    "numbers": ("in-set", "not-in-set"),
    "strings": ("in-set", "not-in-set"),
}
NUMERIC_TYPES = ("count", "number")
LIST_TYPES = ("ports", "cidrs", "numbers", "strings")

# Criteria value key (AWS MetricValue) -> the custom metric type the report carries.
CUSTOM_TYPE_BY_VALUE_KEY = {"number": "number", "numbers": "number_list", "strings": "string_list", "cidrs": "ip_list"}
# The same, by the AWS CreateCustomMetric `metricType` names (report names accepted too).
_CUSTOM_VALUE_TYPE_BY_DECLARED = {
    "number": "number",
    "number-list": "numbers",
    "string-list": "strings",
    "ip-address-list": "cidrs",
    "number_list": "numbers",
    "string_list": "strings",
    "ip_list": "cidrs",
}


class MetricError(ValueError):
    """A metric id or type the catalogue cannot resolve."""


@dataclass(frozen=True)
class MetricSpec:
    id: str
    value_type: str  # count | number | ports | cidrs | numbers | strings
    operators: Tuple[str, ...]
    delta: bool  # a per-report delta, summed over durationSeconds
    extract: Callable[[Mapping[str, Any]], Any]
    custom: bool = False

    @property
    def numeric(self) -> bool:
        return self.value_type in NUMERIC_TYPES


def _dig(report: Mapping[str, Any], *keys: str) -> Any:
    # plain dict checks: reports are decoded JSON/CBOR, and typing.Mapping checks cost 10x more
    node: Any = report
    for key in keys:
        if type(node) is not dict:
            return None
        node = node.get(key)
        if node is None:
            return None
    return node


def _network_stat(key: str) -> Callable[[Mapping[str, Any]], Optional[int]]:
    def extract(report):
        value = _dig(report, "metrics", "network_stats", key)
        return value if type(value) is int else None

    return extract


def _interval(report: Mapping[str, Any], key: str) -> list:
    """A list of Garrison's `interval_sockets` extension (sockets closed since the previous
    report, agent.interval); empty when the report has none."""
    items = _dig(report, "metrics", "interval_sockets", key)
    return [e for e in items if type(e) is dict] if type(items) is list else []


def _ports(group: str) -> Callable[[Mapping[str, Any]], Optional[List[int]]]:
    protocol = "tcp" if group == "listening_tcp_ports" else "udp"

    def snapshot(report):
        node = _dig(report, "metrics", group)
        if type(node) is not dict:
            return None
        entries = node.get("ports") or ()
        try:  # the validator guarantees {"port": int} entries: the fast path
            return sorted({entry["port"] for entry in entries})
        except (KeyError, TypeError):
            return sorted({e["port"] for e in entries if type(e) is dict and type(e.get("port")) is int})

    def extract(report):
        """The snapshot's listening ports, united with those that listened in the interval."""
        ports = snapshot(report)
        between = {
            e["port"]
            for e in _interval(report, "listening_ports")
            if e.get("protocol") == protocol and type(e.get("port")) is int
        }
        if not between:
            return ports
        return sorted(between.union(ports or ()))

    return extract


def _total(*path: str, list_key: str) -> Callable[[Mapping[str, Any]], Optional[int]]:
    """`total` (the true count, lists may be capped); the list length when total is absent."""

    def extract(report):
        node = _dig(report, *path)
        if type(node) is not dict:
            return None
        total = node.get("total")
        if type(total) is int:
            return total
        items = node.get(list_key)
        return len(items) if isinstance(items, list) else None

    return extract


def remote_ip(remote_addr: str) -> Optional[str]:
    """The address of "ip:port" / "[v6]:port" (a bare address too); IPv6 in its canonical form.

    The validator has checked the endpoint already; this strips the port cheaply (it runs for
    every connection of every report). Anything unparsable that still gets here is never inside
    a CIDR (garrison.detect.judge.evaluate).
    """
    if not remote_addr:
        return None
    if remote_addr[0] == "[":
        end = remote_addr.find("]")
        return _canonical_v6(remote_addr[1:end]) if end > 1 else None
    if remote_addr.count(":") == 1:
        return remote_addr[: remote_addr.index(":")] or None
    if ":" in remote_addr:
        return _canonical_v6(remote_addr)  # bare IPv6 without brackets (no port)
    return remote_addr


@lru_cache(maxsize=16384)
def _canonical_v6(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return text


def _destination_ips(report: Mapping[str, Any]) -> Optional[List[str]]:
    """Remote addresses of the snapshot's established connections, united with those of the
    interval's closed TCP and UDP sockets (the interval_sockets extension)."""
    found = (remote_ip(e.get("remote_addr") or "") for e in _interval(report, "connections"))
    between = {ip for ip in found if ip is not None}
    node = _dig(report, "metrics", "tcp_connections", "established_connections")
    if type(node) is not dict:
        return sorted(between) if between else None
    ips = between
    known = _IP_OF_ENDPOINT
    for conn in node.get("connections") or ():
        addr = conn.get("remote_addr") if type(conn) is dict else None
        if type(addr) is not str:
            continue
        ip = known.get(addr)
        if ip is None:
            ip = remote_ip(addr)
            if not ip:
                continue
            if len(known) >= _IP_OF_ENDPOINT_MAX:
                known.clear()
            known[addr] = ip
        ips.add(ip)
    return sorted(ips)


# endpoint -> its address: devices report the same endpoints report after report, and a
# gateway's report has dozens (bounded: cleared when full)
_IP_OF_ENDPOINT: Dict[str, str] = {}
_IP_OF_ENDPOINT_MAX = 65536


def _spec(metric_id, value_type, delta, extract, custom=False) -> MetricSpec:
    return MetricSpec(metric_id, value_type, OPERATORS[value_type], delta, extract, custom)


_CONNECTIONS = ("metrics", "tcp_connections", "established_connections")
CATALOGUE: Dict[str, MetricSpec] = {
    spec.id: spec
    for spec in (
        _spec("aws:all-bytes-in", "count", True, _network_stat("bytes_in")),
        _spec("aws:all-bytes-out", "count", True, _network_stat("bytes_out")),
        _spec("aws:all-packets-in", "count", True, _network_stat("packets_in")),
        _spec("aws:all-packets-out", "count", True, _network_stat("packets_out")),
        _spec("aws:listening-tcp-ports", "ports", False, _ports("listening_tcp_ports")),
        _spec("aws:listening-udp-ports", "ports", False, _ports("listening_udp_ports")),
        _spec(
            "aws:num-listening-tcp-ports", "count", False, _total("metrics", "listening_tcp_ports", list_key="ports")
        ),
        _spec(
            "aws:num-listening-udp-ports", "count", False, _total("metrics", "listening_udp_ports", list_key="ports")
        ),
        _spec("aws:num-established-tcp-connections", "count", False, _total(*_CONNECTIONS, list_key="connections")),
        _spec("aws:destination-ip-addresses", "cidrs", False, _destination_ips),
    )
}

# The device metrics ML Detect models (the numeric ones); custom `number` metrics qualify too.
ML_METRICS = tuple(spec.id for spec in CATALOGUE.values() if spec.numeric)


def _never(report: Mapping[str, Any]) -> None:
    return None


def _connected(report: Mapping[str, Any]) -> int:
    return 0  # a device that reports is connected: no disconnect duration


# aws:disconnect-duration, the one cloud-side metric the engine measures itself: whole units
# (minutes, as on AWS) since the thing's last accepted report. Every accepted report is a
# datapoint of 0; the engine's periodic sweep adds one per silent thing (garrison.detect.engine).
DISCONNECT_DURATION = "aws:disconnect-duration"
DISCONNECT_OPERATORS = ("less-than", "less-than-equals")  # AWS: a maximum time disconnected

# Garrison's own: whole minutes since the last accepted report, whatever the connection does
# ("silent but connected" is its own signal; aws:disconnect-duration is the real connection state
# when the engine has a broker view, garrison.detect.judge.cloudmetrics).
REPORT_SILENCE = "garrison:report-silence"
SILENCE_METRICS = (DISCONNECT_DURATION, REPORT_SILENCE)

# AWS's cloud-side metrics: measured by AWS IoT Core, never by a device. Reports carry none of
# them (their extractors give no datapoint); the engine computes them from the broker's log
# (garrison.detect.judge.cloudmetrics) when it has one, and aws:disconnect-duration in its sweep.
BROKER_METRICS = (
    "aws:num-messages-received",
    "aws:num-messages-sent",
    "aws:message-byte-size",
    "aws:num-authorization-failures",
    "aws:num-connection-attempts",
    "aws:num-disconnects",
    "aws:source-ip-address",
)
# the metrics a metricDimension (a TOPIC_FILTER dimension) may narrow, as on AWS
DIMENSION_METRICS = (
    "aws:num-messages-sent",
    "aws:num-messages-received",
    "aws:message-byte-size",
    "aws:num-authorization-failures",
)
CLOUD_METRICS: Dict[str, MetricSpec] = {
    spec.id: spec
    for spec in (
        *(
            _spec(metric_id, "cidrs" if metric_id == "aws:source-ip-address" else "count", False, _never)
            for metric_id in BROKER_METRICS
        ),
        MetricSpec(DISCONNECT_DURATION, "count", DISCONNECT_OPERATORS, False, _connected),
        MetricSpec(REPORT_SILENCE, "count", DISCONNECT_OPERATORS, False, _connected),
    )
}


def _custom(name: str, value_type: str) -> Callable[[Mapping[str, Any]], Any]:
    report_key = CUSTOM_TYPE_BY_VALUE_KEY[value_type]  # value type "numbers" -> report key "number_list"

    def extract(report):
        entries = _dig(report, "custom_metrics", name)
        if type(entries) is not list or not entries or type(entries[0]) is not dict:
            return None
        value = entries[0].get(report_key)
        if value is None:
            return None  # absent, or reported with another type: no datapoint
        if value_type == "number":
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if not isinstance(value, list):
            return None
        return sorted(set(value)) if value_type == "cidrs" else list(value)

    return extract


def custom_value_type(criteria: Optional[Mapping[str, Any]] = None, declared_type: Optional[str] = None) -> str:
    """The value type of a custom metric: from its declared type, else the criteria's value key.

    Behaviors without a value (statistical threshold, ML) are numeric: AWS only allows them on
    `number` custom metrics.
    """
    if declared_type is not None:
        try:
            return _CUSTOM_VALUE_TYPE_BY_DECLARED[declared_type]
        except KeyError:
            raise MetricError(
                f"unknown custom metric type {declared_type!r} (choose number, "
                "number-list, string-list or ip-address-list)"
            ) from None
    value = (criteria or {}).get("value")
    if isinstance(value, Mapping) and value:
        keys = [k for k in value if k in CUSTOM_TYPE_BY_VALUE_KEY]
        if len(keys) == 1:
            return keys[0]
        raise MetricError("a custom metric's criteria value must hold exactly one of number, numbers, strings, cidrs")
    return "number"


def spec_for(
    metric_id: str, criteria: Optional[Mapping[str, Any]] = None, declared_type: Optional[str] = None
) -> MetricSpec:
    """The spec of a device metric (aws:...) or of a custom metric (any other name)."""
    if not isinstance(metric_id, str) or not metric_id:
        raise MetricError("metric must be a non-empty string")
    if metric_id.startswith("aws:"):
        try:
            return CATALOGUE.get(metric_id) or CLOUD_METRICS[metric_id]
        except KeyError:
            raise MetricError(f"unknown metric {metric_id!r}; device metrics are: " + ", ".join(CATALOGUE)) from None
    if metric_id == REPORT_SILENCE:
        return CLOUD_METRICS[metric_id]
    value_type = custom_value_type(criteria, declared_type)
    return _spec(metric_id, value_type, False, _custom(metric_id, value_type), custom=True)


def extract(report_long: Mapping[str, Any], metric_id: str, spec: Optional[MetricSpec] = None) -> Any:
    """The metric's value in a (validated, long-name) report, or None when it is absent."""
    return (spec or spec_for(metric_id)).extract(report_long)
