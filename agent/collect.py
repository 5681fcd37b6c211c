"""Run the enabled collectors and gather their results into one report.

Each collector runs on its own: a failed one (or one that raises) omits its metric group, is
logged, and never stops the others. Every run's duration and success are logged at debug and
returned to the caller as `CollectorResult`s.
"""

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from garrison.agent import report
from garrison.agent.deltas import NetworkDeltas
from garrison.collectors.base import CollectorResult
from garrison.wire.limits import DEFAULT_MAX_LIST_ITEMS

log = logging.getLogger(__name__)


def make_collectors(
    enabled: Iterable[str],
    socket_backend: str = "auto",
    interfaces: Optional[List[str]] = None,
    include_loopback: bool = False,
    posture_checks: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """Collector objects by config name (collectors imported here, so a broken one is contained)."""
    from garrison.collectors import interfaces as ifaces
    from garrison.collectors import sockets

    factories: Dict[str, Callable[[], Any]] = {
        "listening_tcp": lambda: sockets.ListeningTcpCollector(socket_backend),
        "listening_udp": lambda: sockets.ListeningUdpCollector(socket_backend),
        "connections": lambda: sockets.EstablishedConnectionsCollector(socket_backend),
        "network_stats": lambda: ifaces.InterfaceCountersCollector(
            include=interfaces or None, include_loopback=include_loopback
        ),
        "posture": lambda: _posture(posture_checks),
    }
    return {name: factories[name]() for name in enabled}


def _posture(checks: Optional[List[str]]):
    from garrison.collectors import posture

    return posture.PostureCollector(checks=posture.CHECKS if checks is None else checks)


def run_collector(name: str, collector: Any) -> CollectorResult:
    """One collector's run; exceptions become an unsuccessful result."""
    try:
        result = collector.collect()
    except Exception as exc:  # collectors should not raise; if one does, it costs only its group
        result = CollectorResult(name, None, 0.0, False, f"{type(exc).__name__}: {exc}")
    if result.success:
        log.debug("collector %s ok in %.1f ms", name, result.duration_s * 1000)
    else:
        log.warning(
            "collector %s failed after %.1f ms: %s; its metrics are left out of this report",
            name,
            result.duration_s * 1000,
            result.error,
        )
    return result


class ReportCollector:
    """Collects one report per call; keeps the network-delta baseline in `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        enabled: Iterable[str],
        socket_backend: str = "auto",
        interfaces: Optional[List[str]] = None,
        include_loopback: bool = False,
        max_list_items: int = DEFAULT_MAX_LIST_ITEMS,
        persist: bool = True,
        events: Any = None,
        interval_extension: bool = False,
        fold_interval: bool = False,
        posture_checks: Optional[List[str]] = None,
        socket_owners: bool = False,
    ):
        # events: a started collectors.sockevents.SocketEvents (sockets closed between reports)
        self.events, self.interval_extension, self.fold_interval = events, interval_extension, fold_interval
        self.socket_owners = socket_owners  # add the socket_owners extension (garrison.agent.owners)
        self.collectors = make_collectors(enabled, socket_backend, interfaces, include_loopback, posture_checks)
        self.deltas = NetworkDeltas(Path(state_dir), persist=persist) if "network_stats" in self.collectors else None
        self.max_list_items = max_list_items
        self.last_results: List[CollectorResult] = []

    def collect(
        self, report_id: int, custom_metrics: Optional[Mapping[str, Any]] = None
    ) -> Tuple[Dict[str, Any], List[CollectorResult]]:
        """(long-name report, collector results). Raises ReportError only if nothing at all was collected."""
        groups: Dict[str, Any] = {}
        results = []
        for name, collector in self.collectors.items():
            result = run_collector(name, collector)
            results.append(result)
            if not result.success:
                continue
            if name == "posture":  # device posture travels as custom metrics (posture:*)
                custom_metrics = {**result.data, **(custom_metrics or {})}
            elif name == "network_stats":
                try:
                    if self.deltas is None:  # __init__ makes it whenever network_stats runs
                        raise RuntimeError("no delta baseline")
                    groups["network_stats"] = self.deltas.update(result.data)
                except Exception as exc:  # e.g. the state directory became read-only
                    result.success, result.error = False, f"deltas: {type(exc).__name__}: {exc}"
                    log.warning("network deltas failed: %s; network_stats left out of this report", exc)
            else:
                groups[name] = result.data  # config names are report.build's keywords
        self.last_results = results
        built = report.build(report_id, custom_metrics=custom_metrics, max_list_items=self.max_list_items, **groups)
        if self.events is not None:
            self._add_interval(built)
        if self.socket_owners and any(k in groups for k in ("listening_tcp", "listening_udp", "connections")):
            self._add_owners(built, groups)
        return built, results

    def _add_owners(self, built: Dict[str, Any], groups: Mapping[str, Any]) -> None:
        from garrison.agent import owners

        try:
            if not hasattr(self, "_owner_cache"):
                self._owner_cache = owners.OwnerCache()
            built.setdefault("metrics", {})["socket_owners"] = owners.extension(
                groups, self.max_list_items, cache=self._owner_cache
            )
        except Exception as exc:  # best effort: the report goes without owners
            log.warning("socket owners left out of this report: %s: %s", type(exc).__name__, exc)

    def _add_interval(self, built: Dict[str, Any]) -> None:
        """The sockets closed since the last report (agent.interval), when the kernel tells us."""
        from garrison.agent import interval

        summary = self.events.drain()
        if not summary["available"]:
            return  # refused or stopped: logged once by the collector; snapshots only
        if summary["overflow"] or summary["lost"]:
            log.warning(
                "socket events: %d of %d closed sockets not itemised (table full), kernel drops %d",
                summary["overflow"],
                summary["events"],
                summary["lost"],
            )
        if self.fold_interval:
            interval.fold(built, summary, self.max_list_items)
        if self.interval_extension:
            built.setdefault("metrics", {})["interval_sockets"] = interval.extension(summary, self.max_list_items)
