"""Name the process behind a port or a connection that violates: "4444/tcp opened by
/usr/bin/nc, pid 812, user www-data".

Garrison's agent adds the `socket_owners` extension (garrison.agent.owners) to reports for
Garrison engines; for a port or destination behavior, the owners of the offending ports or
destinations go into the violation's `violationEventAdditionalInfo.socketOwners` and a one-line
`explanation` that the alerts and `violations list` show. Reports without the extension (AWS's
agents, an agent reporting to AWS) give neither.
"""

from typing import Any, Dict, List, Mapping, Optional

from garrison.detect.judge.metrics import remote_ip

PORT_METRICS = {"aws:listening-tcp-ports": "tcp", "aws:listening-udp-ports": "udp"}
DESTINATIONS = "aws:destination-ip-addresses"
MAX_NAMED = 10  # owners kept per violation (the explanation names at most 3)


def offenders(behavior, value: Any) -> List[Any]:
    """The items of a list datapoint that make it violate its rule."""
    criterion, operator = behavior.criterion, behavior.operator
    if criterion is None or not isinstance(value, list):
        return []
    if operator == "in-port-set":
        return [p for p in value if p not in criterion]
    if operator == "not-in-port-set":
        return [p for p in value if p in criterion]
    if operator == "in-cidr-set":
        return [a for a in value if not criterion.contains(a)]
    if operator == "not-in-cidr-set":
        return [a for a in value if criterion.contains(a)]
    return []


def describe(owner: Mapping[str, Any]) -> str:
    who = owner.get("executable") or owner.get("process") or "?"
    parts = [f"pid {owner.get('pid')}"]
    if owner.get("user"):
        parts.append(f"user {owner['user']}")
    return f"{who}, {', '.join(parts)}"


def note(behavior, report: Mapping[str, Any], value: Any) -> Optional[Dict[str, Any]]:
    """{"socketOwners": [...], "explanation": "..."} for the offending items of `value`, or None."""
    metrics = report.get("metrics") if type(report) is dict else None
    owners = metrics.get("socket_owners") if type(metrics) is dict else None
    if type(owners) is not dict or behavior.kind != "rule":
        return None
    bad = offenders(behavior, value)
    if not bad:
        return None
    named: List[Dict[str, Any]] = []
    if behavior.metric in PORT_METRICS:
        protocol = PORT_METRICS[behavior.metric]
        by_port = {
            o.get("port"): o
            for o in owners.get("listening_ports") or ()
            if type(o) is dict and o.get("protocol") == protocol
        }
        for port in bad:
            if port in by_port:
                owner = by_port[port]
                named.append(
                    {
                        "port": port,
                        "protocol": protocol,
                        **_owner(owner),
                        "text": f"{port}/{protocol} opened by {describe(owner)}",
                    }
                )
    elif behavior.metric == DESTINATIONS:
        bad_set = set(bad)
        for owner in owners.get("connections") or ():
            if type(owner) is not dict:
                continue
            address = remote_ip(owner.get("remote_addr") or "")
            if address in bad_set:
                bad_set.discard(address)  # one owner per destination
                named.append(
                    {
                        "remoteAddr": owner.get("remote_addr"),
                        **_owner(owner),
                        "text": f"connection to {owner.get('remote_addr')} by {describe(owner)}",
                    }
                )
    if not named:
        return None
    named = named[:MAX_NAMED]
    texts = [n.pop("text") for n in named]
    more = f" (and {len(texts) - 3} more)" if len(texts) > 3 else ""
    return {"socketOwners": named, "explanation": "; ".join(texts[:3]) + more}


def _owner(owner: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: owner[k] for k in ("pid", "process", "executable", "user") if owner.get(k) is not None}
