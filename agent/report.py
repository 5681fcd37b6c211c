"""Build, cap and encode Device Defender metric reports on the device.

Reports are built in long names (the in-memory form); `encode` derives the short form from
`garrison.wire.schema`. Everything device and engine must agree on (names, values, topics,
limits, codecs) is the wire contract in `garrison.wire`; this module builds reports that keep it.
"""

import time
from typing import Any, Dict, Iterable, List, Mapping, Optional

from garrison.wire import codec, names, schema, topics, values
from garrison.wire.limits import DEFAULT_MAX_LIST_ITEMS, MAX_PAYLOAD_BYTES  # noqa: F401  (re-exported)

FORMATS = topics.FORMATS


class ReportError(ValueError):
    """A report that cannot be built, encoded or decoded."""


def topic(thing: str, fmt: str) -> str:
    """The topic a device publishes its reports to (garrison.wire.topics)."""
    try:
        return topics.report_topic(thing, fmt)
    except ValueError as exc:
        raise ReportError(str(exc)) from None


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
    """A report in long names. Groups left as None are omitted; lists are capped, totals true.

    Custom metric names and values must keep the wire contract (garrison.wire.names,
    garrison.wire.values), else ReportError naming the rule: the agent's CustomMetricReader
    leaves a bad one out before it gets here, so it costs only its own metric."""
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
            "established_connections": {"connections": conns[:max_list_items], "total": len(conns)}
        }
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
        try:
            report["custom_metrics"] = {
                names.check_custom_metric_name(name): values.custom_metric(v) for name, v in custom_metrics.items()
            }
        except ValueError as exc:
            raise ReportError(str(exc)) from None
    if "metrics" not in report and "custom_metrics" not in report:
        raise ReportError("a report needs metrics or custom metrics")
    return report


def _lists(report: Dict[str, Any]) -> List[List[Any]]:
    """The capped lists of a long-name report, so the size guard can shrink them."""
    metrics = report.get("metrics", {})
    found = [metrics[k]["ports"] for k in ("listening_tcp_ports", "listening_udp_ports") if k in metrics]
    if "tcp_connections" in metrics:
        found.append(metrics["tcp_connections"]["established_connections"]["connections"])
    if "interval_sockets" in metrics:  # agent.interval's extension (its overflow stays as collected)
        found += [metrics["interval_sockets"]["connections"], metrics["interval_sockets"]["listening_ports"]]
    if "socket_owners" in metrics:  # agent.owners': up to 1,000 entries of up to 1 KB paths each
        found += [metrics["socket_owners"]["connections"], metrics["socket_owners"]["listening_ports"]]
    return found


def _dump(report: Dict[str, Any], fmt: str, short_names: bool) -> bytes:
    try:
        return codec.encode(schema.to_short(report) if short_names else report, fmt)
    except codec.CodecError as exc:
        raise ReportError(str(exc)) from None


def encode(
    report: Dict[str, Any], fmt: str = "json", short_names: bool = False, max_bytes: int = MAX_PAYLOAD_BYTES
) -> bytes:
    """Encode a long-name report; lists are trimmed (longest first) until it fits `max_bytes`.

    Trimming changes the report in place, so the caller keeps what was actually sent.
    """
    payload = _dump(report, fmt, short_names)
    while len(payload) > max_bytes:
        longest = max(_lists(report), key=len, default=[])
        if not longest:
            raise ReportError(f"report is {len(payload)} bytes, over {max_bytes}, and has no list left to trim")
        del longest[len(longest) // 2 :]
        payload = _dump(report, fmt, short_names)
    return payload


def decode(payload: bytes, fmt: str) -> Any:
    """Parse a payload (garrison.wire.codec.decode); no validation: see garrison.detect.ingest.validate."""
    try:
        return codec.decode(payload, fmt)
    except codec.CodecError as exc:
        raise ReportError(str(exc)) from None
