"""Helpers for the engine's tests: real reports (garrison.agent.report.build + garrison.detect.ingest.validate) and profiles."""
import itertools
from typing import Any, Dict, Iterable, Optional

from garrison.agent import report
from garrison.collectors.base import Connection, ListeningSocket
from garrison.detect.ingest.validate import validate

_ids = itertools.count(1)


def build(*, tcp_ports: Optional[Iterable[int]] = None, udp_ports: Optional[Iterable[int]] = None,
          connections: Optional[int] = None, remote_ips: Optional[Iterable[str]] = None,
          network_stats: Optional[Dict[str, int]] = None, custom: Optional[Dict[str, Any]] = None,
          report_id: Optional[int] = None) -> Dict[str, Any]:
    """A long-name report as the agent builds it (not validated)."""
    conns = None
    if remote_ips is not None:
        conns = [Connection(4, "192.0.2.10", 40000 + i, ip, 443, "eth0") for i, ip in enumerate(remote_ips)]
    elif connections is not None:
        conns = [Connection(4, "192.0.2.10", 40000 + i, f"198.51.100.{i % 250 + 1}", 443, "eth0")
                 for i in range(connections)]
    return report.build(
        report_id or next(_ids),
        listening_tcp=None if tcp_ports is None else [ListeningSocket("tcp", 4, "0.0.0.0", p) for p in tcp_ports],
        listening_udp=None if udp_ports is None else [ListeningSocket("udp", 4, "0.0.0.0", p) for p in udp_ports],
        connections=conns, network_stats=network_stats, custom_metrics=custom)


def validated(**kwargs) -> Dict[str, Any]:
    """A report as the engine receives it from garrison.detect.ingest.frontdoor: validated, long names."""
    return validate(build(**kwargs))


def behavior(name: str, metric: str, operator: Optional[str] = None, value: Any = None, **criteria: Any) -> Dict[str, Any]:
    crit: Dict[str, Any] = dict(criteria)
    if operator is not None:
        crit["comparisonOperator"] = operator
    if value is not None:
        crit["value"] = value
    return {"name": name, "metric": metric, "criteria": crit}


def profile(name: str, *behaviors: Dict[str, Any]) -> Dict[str, Any]:
    return {"securityProfileName": name, "behaviors": list(behaviors)}


def max_connections(limit: int = 5, to_alarm: int = 1, to_clear: int = 1, name: str = "Conns") -> Dict[str, Any]:
    """A profile: fewer than `limit` established connections is normal."""
    return profile(name, behavior("conns", "aws:num-established-tcp-connections", "less-than", {"count": limit},
                                  consecutiveDatapointsToAlarm=to_alarm, consecutiveDatapointsToClear=to_clear))


class Collect:
    """An alert target that keeps what it is given (the engine's side of garrison.detect.respond.alerts)."""

    def __init__(self):
        self.messages = []

    def deliver(self, message):
        self.messages.append(dict(message))
