"""The process behind each listening port and connection: the `socket_owners` extension.

For Garrison engines only (garrison.wire.schema declares and bounds it): AWS IoT rejects
reports with fields it does not know, so the extension follows the same decision as
`interval_sockets` (garrison.agent.interval.goes_to_aws): never over the awsiot or greengrass
transports, nor to an `*.amazonaws.com` endpoint. The owners come from one scan of
/proc/<pid>/fd per report (garrison.collectors.processes); a socket whose owner we may not see
(another user's process, without root) is simply left out.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional

from garrison.agent import report as wire
from garrison.agent.interval import goes_to_aws
from garrison.wire import schema

log = logging.getLogger(__name__)

SOCKET_OWNERS = ("auto", "on", "off")


def enabled(config: Any) -> bool:
    """Whether reports carry `socket_owners`: "auto" and "on" both mean Garrison engines only."""
    setting = getattr(config, "socket_owners", "auto")
    return setting != "off" and not goes_to_aws(config)


class OwnerCache:
    """The last /proc scan, reused while every socket of the report is in it: a device whose
    sockets did not change since the previous report costs no scan (bench/bench_owners.py)."""

    def __init__(self) -> None:
        self.owners: Dict[int, Any] = {}
        self.looked_for: set = set()  # inodes the last scan was for (some have no visible owner)
        self.described: Dict[int, Dict[str, Any]] = {}
        self.scans = 0

    def refresh_for(self, inodes: set, root: str) -> None:
        from garrison.collectors import processes

        if inodes - self.looked_for:
            self.owners = processes.socket_owners(root, inodes)
            self.looked_for = set(inodes)
            self.described = {}
            self.scans += 1


def extension(
    groups: Mapping[str, Any], max_items: int, root: str = "/proc", cache: Optional["OwnerCache"] = None
) -> Dict[str, Any]:
    """{"listening_ports": [...], "connections": [...]} (long names) for the socket records of
    this report's groups (collectors.base ListeningSocket / Connection with their inode)."""
    from garrison.collectors import processes

    cap = min(max_items, schema.OWNERS_MAX_ITEMS)
    cache = cache or OwnerCache()
    records = [r for g in ("listening_tcp", "listening_udp", "connections") for r in groups.get(g) or ()]
    cache.refresh_for({r.inode for r in records if r.inode}, root)
    owners, described = cache.owners, cache.described
    users: Dict[int, str] = {}

    def owner(inode: int):
        found = owners.get(inode) if inode else None
        if found is None:
            return None
        pid, name = found
        if pid not in described:
            described[pid] = processes.describe(pid, name, root, users)
        return described[pid]

    ports: List[Dict[str, Any]] = []
    seen = set()
    for group in ("listening_tcp", "listening_udp"):
        for sock in groups.get(group) or ():
            who = owner(sock.inode)
            key = (sock.protocol, sock.port)
            if who is None or key in seen or len(ports) >= cap:
                continue
            seen.add(key)
            ports.append({"port": sock.port, "protocol": sock.protocol, **who})
    connections: List[Dict[str, Any]] = []
    for conn in groups.get("connections") or ():
        who = owner(conn.inode)
        if who is None or len(connections) >= cap:
            continue
        connections.append(
            {"remote_addr": wire.endpoint(conn.remote_address, conn.remote_port), "local_port": conn.local_port, **who}
        )
    return {"listening_ports": ports, "connections": connections}
