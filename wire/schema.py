"""The Device Defender report schema, declared once.

Every field of a metric report is declared here with its long name, short name, kind and bounds.
The encoder (long <-> short names), the engine's validator and the docs are all derived from
this one table, so the two name forms can never drift apart.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

# Largest integer a report may carry: CBOR and most consumers agree on unsigned 64 bits;
# signed 64 bits keeps SQLite and JSON consumers safe.
from garrison.wire.limits import MAX_INT, MAX_PORT  # noqa: F401  (re-exported)
from garrison.wire.values import CUSTOM_METRIC_TYPES  # noqa: F401  (re-exported)

VERSION = "1.0"


@dataclass(frozen=True)
class Field:
    """One field of the report.

    kind: "object" (children are its fields), "list" (a list of objects whose fields are the
    children), "int", "str", or "custom" (the custom metrics map).
    """

    long: str
    short: str
    kind: str
    doc: str
    children: Tuple["Field", ...] = ()
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    required: bool = False
    choices: Tuple[str, ...] = ()  # "str": the only values allowed
    max_items: Optional[int] = None  # "list": the most entries allowed

    def child(self, key: str) -> Optional["Field"]:
        """The child named `key` in either name form (agents mix them)."""
        for field in self.children:
            if key in (field.long, field.short):
                return field
        return None


def _count(long, short, doc, required=False):
    return Field(long, short, "int", doc, minimum=0, maximum=MAX_INT, required=required)


_PORT = (
    Field("port", "pt", "int", "Port number.", minimum=0, maximum=MAX_PORT, required=True),
    Field("interface", "if", "str", "Interface owning the bound address; absent for wildcard binds."),
)


def _port_group(long, short, doc):
    return Field(
        long,
        short,
        "object",
        doc,
        children=(
            Field("ports", "pts", "list", "Listening ports (capped; duplicates removed).", children=_PORT),
            _count("total", "t", "True number of listening ports, before any cap."),
        ),
    )


_CONNECTION = (
    Field("remote_addr", "rad", "str", 'Remote "ip:port", IPv6 as "[addr]:port".', required=True),
    Field("local_port", "lp", "int", "Local port.", minimum=0, maximum=MAX_PORT),
    Field("local_interface", "li", "str", "Interface owning the local address."),
)

# Garrison's extension (not AWS's; the agent never sends it to AWS IoT): sockets the kernel
# destroyed between the previous report and this one (collectors.sockevents).
INTERVAL_MAX_ITEMS = 1000
_PROTOCOL = Field("protocol", "pr", "str", '"tcp" or "udp".', choices=("tcp", "udp"), required=True)
_INTERVAL_SOCKETS = Field(
    "interval_sockets",
    "isk",
    "object",
    "Garrison extension: sockets closed since the previous report (never sent to AWS IoT).",
    children=(
        Field(
            "connections",
            "cs",
            "list",
            "Remote endpoints connected to, one per remote address (capped, busiest first).",
            max_items=INTERVAL_MAX_ITEMS,
            children=(
                Field("remote_addr", "rad", "str", 'First remote "ip:port" seen for the address.', required=True),
                _PROTOCOL,
                Field("local_port", "lp", "int", "Local port of that first socket.", minimum=0, maximum=MAX_PORT),
                _count("count", "n", "Sockets to this address closed in the interval."),
                _count("bytes_in", "bi", "Bytes they received (TCP, from tcp_info)."),
                _count("bytes_out", "bo", "Bytes they sent and had acknowledged (TCP, from tcp_info)."),
            ),
        ),
        Field(
            "listening_ports",
            "lps",
            "list",
            "Local ports that listened (capped).",
            max_items=INTERVAL_MAX_ITEMS,
            children=(
                Field("port", "pt", "int", "Port number.", minimum=0, maximum=MAX_PORT, required=True),
                _PROTOCOL,
                _count("count", "n", "Sockets on this port closed in the interval."),
            ),
        ),
        _count("events", "ev", "Sockets closed in the interval (the true count)."),
        _count("overflow", "of", "Of them, not listed because the collector's table was full."),
        _count("lost", "lo", "Times the kernel dropped events (the collector fell behind)."),
    ),
)

# Garrison's extension (not AWS's; never sent to AWS IoT): the process behind each listening
# port and connection (garrison.agent.owners). Strings are bounded by the validator (1024 chars).
OWNERS_MAX_ITEMS = 1000
_OWNER = (
    Field("pid", "pid", "int", "Process id.", minimum=1, maximum=2**31 - 1, required=True),
    Field("process", "pn", "str", "Process name (comm)."),
    Field("executable", "exe", "str", "Path of the process's executable (when the agent may read it)."),
    Field("user", "usr", "str", "User the process runs as (name, or uid when it has none)."),
)
_SOCKET_OWNERS = Field(
    "socket_owners",
    "sow",
    "object",
    "Garrison extension: the processes owning the listening ports and connections (never sent to AWS IoT).",
    children=(
        Field(
            "listening_ports",
            "lps",
            "list",
            "Owner of each listening port (capped).",
            max_items=OWNERS_MAX_ITEMS,
            children=(
                Field("port", "pt", "int", "Port number.", minimum=0, maximum=MAX_PORT, required=True),
                _PROTOCOL,
                *_OWNER,
            ),
        ),
        Field(
            "connections",
            "cs",
            "list",
            "Owner of each established connection (capped).",
            max_items=OWNERS_MAX_ITEMS,
            children=(
                Field("remote_addr", "rad", "str", 'Remote "ip:port", IPv6 as "[addr]:port".', required=True),
                Field("local_port", "lp", "int", "Local port.", minimum=0, maximum=MAX_PORT),
                *_OWNER,
            ),
        ),
    ),
)

REPORT = Field(
    "report",
    "report",
    "object",
    "A Device Defender metric report.",
    children=(
        Field(
            "header",
            "hed",
            "object",
            "Report header.",
            required=True,
            children=(
                Field(
                    "report_id",
                    "rid",
                    "int",
                    "Positive, increasing per device (epoch ms).",
                    minimum=1,
                    maximum=MAX_INT,
                    required=True,
                ),
                Field("version", "v", "str", 'Always "1.0".', required=True),
            ),
        ),
        Field(
            "metrics",
            "met",
            "object",
            "Device-side metrics.",
            children=(
                _port_group("listening_tcp_ports", "tp", "Listening TCP ports."),
                _port_group("listening_udp_ports", "up", "Listening UDP ports."),
                Field(
                    "tcp_connections",
                    "tc",
                    "object",
                    "TCP connections.",
                    children=(
                        Field(
                            "established_connections",
                            "ec",
                            "object",
                            "Established TCP connections.",
                            children=(
                                Field(
                                    "connections",
                                    "cs",
                                    "list",
                                    "Established connections (capped).",
                                    children=_CONNECTION,
                                ),
                                _count("total", "t", "True number of established connections."),
                            ),
                        ),
                    ),
                ),
                Field(
                    "network_stats",
                    "ns",
                    "object",
                    "Traffic since the previous report (deltas).",
                    children=(
                        _count("bytes_in", "bi", "Bytes received."),
                        _count("bytes_out", "bo", "Bytes sent."),
                        _count("packets_in", "pi", "Packets received."),
                        _count("packets_out", "po", "Packets sent."),
                    ),
                ),
                _INTERVAL_SOCKETS,
                _SOCKET_OWNERS,
            ),
        ),
        Field(
            "custom_metrics",
            "cmet",
            "custom",
            "Custom metrics: name -> [{number | number_list | string_list | ip_list}].",
        ),
    ),
)


def rename(doc: Any, short: bool, field: Field = REPORT) -> Any:
    """Return `doc` with every declared key in the chosen name form.

    Either form is accepted on input, mixed at any level (AWS's sample agent mixes them).
    Unknown keys and custom metric names are kept as they are.
    """
    if field.kind == "object" and isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            sub = field.child(key) if isinstance(key, str) else None
            if sub is None:
                out[key] = value
            else:
                out[sub.short if short else sub.long] = rename(value, short, sub)
        return out
    if field.kind == "list" and isinstance(doc, list):
        item = Field(field.long, field.short, "object", field.doc, children=field.children)
        return [rename(entry, short, item) for entry in doc]
    return doc


def to_long(doc: Any) -> Any:
    return rename(doc, short=False)


def to_short(doc: Any) -> Any:
    return rename(doc, short=True)


def walk(field: Field = REPORT, long_path: str = "", short_path: str = "") -> Iterator[Tuple[str, str, Field]]:
    """Yield (long path, short path, field) for every declared field, depth first."""
    for sub in field.children:
        lp = f"{long_path}.{sub.long}" if long_path else sub.long
        sp = f"{short_path}.{sub.short}" if short_path else sub.short
        if sub.kind == "list":
            lp, sp = lp + "[]", sp + "[]"
        yield lp, sp, sub
        yield from walk(sub, lp, sp)


def markdown_table() -> str:
    """The schema as a Markdown table, for the docs."""
    rows: List[str] = ["| long name | short name | type | bounds | meaning |", "|---|---|---|---|---|"]
    for lp, sp, f in walk():
        bounds = "" if f.minimum is None else f"{f.minimum}–{f.maximum}"
        doc = f.doc.replace("|", "\\|")  # a bare "|" would split the Markdown cell
        rows.append(f"| `{lp}` | `{sp}` | {f.kind} | {bounds} | {doc} |")
    return "\n".join(rows)


def field_at(path: str) -> Field:
    """The field at a dotted long-name path, e.g. "metrics.network_stats.bytes_in"."""
    field = REPORT
    for part in path.replace("[]", "").split("."):
        child = field.child(part)
        if child is None:
            raise KeyError(path)
        field = child
    return field


NETWORK_STATS_KEYS: Dict[str, str] = {f.long: f.short for f in field_at("metrics.network_stats").children}
