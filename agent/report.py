"""Build, cap, encode and decode Device Defender metric reports.

Reports are built in long names (the in-memory form); `encode` derives the short form from
`garrison.wire.schema`. This module is the wire format: the detect engine imports it, the device
collectors never do.
"""
import json
import math
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

import cbor2

from garrison.wire import schema

MAX_PAYLOAD_BYTES = 128 * 1024   # AWS IoT's limit for one report
DEFAULT_MAX_LIST_ITEMS = 500     # per list; with the size guard the report stays under 128 KB
FORMATS = ("json", "cbor")


class ReportError(ValueError):
    """A report that cannot be built, encoded or decoded."""


def topic(thing: str, fmt: str) -> str:
    """The topic a device publishes its reports to."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r} (choose json or cbor)")
    return f"$aws/things/{thing}/defender/metrics/{fmt}"


def next_report_id(previous: int = 0, now_ms: Optional[int] = None) -> int:
    """Epoch milliseconds, but always greater than the previous id (clocks step back)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return max(now_ms, previous + 1)


def endpoint(address: str, port: int) -> str:
    """ "ip:port", IPv6 as "[addr]:port"."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _port_entries(sockets: Iterable[Any]) -> List[Dict[str, Any]]:
    """Port entries from ListeningSocket-like objects, duplicates (same port and interface) removed."""
    seen = set()
    entries = []
    for sock in sockets:
        key = (sock.port, sock.interface)
        if key in seen:
            continue
        seen.add(key)
        entry: Dict[str, Any] = {"port": sock.port}
        if sock.interface:
            entry["interface"] = sock.interface
        entries.append(entry)
    entries.sort(key=lambda e: (e["port"], e.get("interface", "")))
    return entries


def _connection_entries(connections: Iterable[Any]) -> List[Dict[str, Any]]:
    entries = []
    for conn in connections:
        entry: Dict[str, Any] = {
            "remote_addr": endpoint(conn.remote_address, conn.remote_port),
            "local_port": conn.local_port,
        }
        if conn.interface:
            entry["local_interface"] = conn.interface
        entries.append(entry)
    return entries


def check_custom_metric_name(name: Any) -> None:
    """Custom metric names are non-empty strings outside AWS's reserved "aws:" namespace."""
    if not isinstance(name, str) or not name or name.startswith("aws:"):
        raise ReportError(f"invalid custom metric name {name!r}")


def custom_metric(value: Any) -> List[Dict[str, Any]]:
    """The one-element-array form of a custom metric value.

    A number becomes {"number": n}; a list of numbers a number_list; a list of strings a
    string_list. An explicit {"ip_list": [...]} (or any typed dict) passes through.
    """
    if isinstance(value, bool):
        raise ReportError("a custom metric cannot be a boolean")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ReportError("a custom metric number must be finite")
        return [{"number": value}]
    if isinstance(value, Mapping):
        if len(value) != 1 or next(iter(value)) not in schema.CUSTOM_METRIC_TYPES:
            raise ReportError(f"a typed custom metric needs one of {schema.CUSTOM_METRIC_TYPES}")
        return [dict(value)]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return [{"number_list": items}]
        if all(isinstance(v, str) for v in items):
            return [{"string_list": items}]
    raise ReportError(f"unsupported custom metric value {value!r}")


def build(
    report_id: int,
    *,
    listening_tcp: Optional[Iterable[Any]] = None,
    listening_udp: Optional[Iterable[Any]] = None,
    connections: Optional[Iterable[Any]] = None,
    network_stats: Optional[Mapping[str, int]] = None,
    custom_metrics: Optional[Mapping[str, Any]] = None,
    max_list_items: int = DEFAULT_MAX_LIST_ITEMS,
) -> Dict[str, Any]:
    """A report in long names. Groups left as None are omitted; lists are capped, totals true."""
    if not isinstance(report_id, int) or report_id < 1:
        raise ReportError(f"report id must be a positive integer, got {report_id!r}")
    metrics: Dict[str, Any] = {}
    for key, sockets in (("listening_tcp_ports", listening_tcp), ("listening_udp_ports", listening_udp)):
        if sockets is not None:
            ports = _port_entries(sockets)
            metrics[key] = {"ports": ports[:max_list_items], "total": len(ports)}
    if connections is not None:
        conns = _connection_entries(connections)
        metrics["tcp_connections"] = {
            "established_connections": {"connections": conns[:max_list_items], "total": len(conns)}}
    if network_stats is not None:
        stats = {}
        for key in schema.NETWORK_STATS_KEYS:
            value = int(network_stats.get(key, 0))
            if value < 0:
                raise ReportError(f"network_stats.{key} is negative ({value}); deltas never are")
            stats[key] = value
        metrics["network_stats"] = stats
    report: Dict[str, Any] = {"header": {"report_id": report_id, "version": schema.VERSION}}
    if metrics:
        report["metrics"] = metrics
    if custom_metrics:
        for name in custom_metrics:
            check_custom_metric_name(name)
        report["custom_metrics"] = {name: custom_metric(v) for name, v in custom_metrics.items()}
    if "metrics" not in report and "custom_metrics" not in report:
        raise ReportError("a report needs metrics or custom metrics")
    return report


def _lists(report: Dict[str, Any]) -> List[List[Any]]:
    """The capped lists of a long-name report, so the size guard can shrink them."""
    metrics = report.get("metrics", {})
    found = [metrics[k]["ports"] for k in ("listening_tcp_ports", "listening_udp_ports") if k in metrics]
    if "tcp_connections" in metrics:
        found.append(metrics["tcp_connections"]["established_connections"]["connections"])
    if "interval_sockets" in metrics:   # agent.interval's extension (its overflow stays as collected)
        found += [metrics["interval_sockets"]["connections"], metrics["interval_sockets"]["listening_ports"]]
    return found


def _dump(report: Dict[str, Any], fmt: str, short_names: bool) -> bytes:
    doc = schema.to_short(report) if short_names else report
    if fmt == "json":
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if fmt == "cbor":
        return cbor2.dumps(doc)
    raise ReportError(f"unknown format {fmt!r} (choose json or cbor)")


def encode(report: Dict[str, Any], fmt: str = "json", short_names: bool = False,
           max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Encode a long-name report; lists are trimmed (longest first) until it fits `max_bytes`.

    Trimming changes the report in place, so the caller keeps what was actually sent.
    """
    payload = _dump(report, fmt, short_names)
    while len(payload) > max_bytes:
        longest = max(_lists(report), key=len, default=[])
        if not longest:
            raise ReportError(f"report is {len(payload)} bytes, over {max_bytes}, and has no list left to trim")
        del longest[len(longest) // 2:]
        payload = _dump(report, fmt, short_names)
    return payload


def decode(payload: bytes, fmt: str) -> Any:
    """Parse a payload into Python objects (no validation: see garrison.detect.ingest.validate)."""
    try:
        if fmt == "json":
            return json.loads(payload)
        if fmt == "cbor":
            return cbor2.loads(payload)
    except (ValueError, TypeError, RecursionError, cbor2.CBORDecodeError, OverflowError, MemoryError) as exc:
        raise ReportError(f"malformed {fmt.upper()}: {exc}") from None
    raise ReportError(f"unknown format {fmt!r} (choose json or cbor)")
