"""What the socket-event collector adds to a report: sockets closed between two snapshots.

Two ways, chosen by configuration (`plan`):
- the `interval_sockets` extension (garrison.wire.schema), for Garrison engines only: AWS IoT rejects
  reports with fields it does not know, so it is never sent over the awsiot or greengrass
  transports, nor over mqtt to an `*.amazonaws.com` endpoint;
- folding (opt-in, AWS too): the interval's TCP remote endpoints join the established-connections
  list, so `aws:destination-ip-addresses` rules on any engine see them. The list's `total` grows
  with them, so `aws:num-established-tcp-connections` then counts them too.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from garrison.agent import report as wire
from garrison.wire import schema

log = logging.getLogger(__name__)

SOCKET_EVENTS = ("auto", "on", "off")


def goes_to_aws(config: Any) -> bool:
    """True when reports reach AWS IoT Core, which refuses fields it does not declare."""
    if config.transport in ("awsiot", "greengrass"):
        return True
    try:
        host = config.broker_address[0]
    except Exception:
        return False
    return host.lower().rstrip(".").endswith(".amazonaws.com")


def plan(config: Any) -> Tuple[bool, bool, bool]:
    """(run the collector, send the extension, fold connections) for this configuration.

    `socket_events = "auto"` runs the collector where its result can be used: on a Garrison
    engine (the extension), or anywhere folding is asked for."""
    aws = goes_to_aws(config)
    fold = bool(config.fold_interval_connections)
    if config.socket_events == "off":
        return False, False, False
    run = config.socket_events == "on" or not aws or fold
    return run, run and not aws, run and fold


def make_events(config: Any):
    """A started SocketEvents for this configuration, or None when it is not wanted."""
    run, _extension, _fold = plan(config)
    if not run:
        return None
    from garrison.collectors.sockevents import SocketEvents

    events = SocketEvents(config.socket_events_max)
    events.start()  # logs once and stays unavailable where the kernel refuses the groups
    return events


def extension(interval: Mapping[str, Any], max_items: int) -> Dict[str, Any]:
    """The `interval_sockets` group (long names) from a SocketEvents summary, lists capped.

    Capped entries are added to `overflow`, so nothing disappears without a count."""
    cap = min(max_items, schema.INTERVAL_MAX_ITEMS)
    connections = [
        {
            "remote_addr": wire.endpoint(c["remote_address"], c["remote_port"]),
            "protocol": c["protocol"],
            "local_port": c["local_port"],
            "count": c["count"],
            "bytes_in": c["bytes_in"],
            "bytes_out": c["bytes_out"],
        }
        for c in interval["connections"]
    ]  # busiest first
    listeners: Dict[Tuple[str, int], int] = {}
    for entry in interval["listeners"]:
        key = (entry["protocol"], entry["port"])
        listeners[key] = listeners.get(key, 0) + entry["count"]
    ports = [{"port": port, "protocol": protocol, "count": n} for (protocol, port), n in sorted(listeners.items())]
    capped = max(0, len(connections) - cap) + max(0, len(ports) - cap)
    return {
        "connections": connections[:cap],
        "listening_ports": ports[:cap],
        "events": interval["events"],
        "overflow": interval["overflow"] + capped,
        "lost": interval["lost"],
    }


def fold(built: Dict[str, Any], interval: Mapping[str, Any], max_items: int) -> int:
    """Add the interval's TCP remote endpoints (one per address not already listed) to the
    established connections of `built`; returns how many were added."""
    group = (
        built.setdefault("metrics", {})
        .setdefault("tcp_connections", {})
        .setdefault("established_connections", {"connections": [], "total": 0})
    )
    listed: List[Dict[str, Any]] = group["connections"]
    present = {wire_ip(c["remote_addr"]) for c in listed}
    added = 0
    for c in interval["connections"]:
        if c["protocol"] != "tcp" or c["remote_address"] in present:
            continue
        present.add(c["remote_address"])
        added += 1
        if len(listed) < max_items:
            listed.append(
                {"remote_addr": wire.endpoint(c["remote_address"], c["remote_port"]), "local_port": c["local_port"]}
            )
    group["total"] = group.get("total", len(listed)) + added
    return added


def wire_ip(remote_addr: str) -> Optional[str]:
    """The address part of "ip:port" / "[v6]:port"."""
    if remote_addr.startswith("["):
        return remote_addr[1 : remote_addr.find("]")]
    return remote_addr.rpartition(":")[0] or None
