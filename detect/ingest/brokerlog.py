"""Mosquitto's log, read as what the broker saw each client do: the one parser of it.

The cloud-side metrics (garrison.detect.judge.cloudmetrics) are computed from these events. Lines
(Mosquitto 2.0, `log_type all`, epoch timestamps, checked against mosquitto 2.0.11):

  1764400000: New client connected from 10.0.0.5:50000 as cam-1 (p2, c1, k60, u'cam-1').    notice
  1764400000: Client cam-1 disconnected.  | closed its connection. | has exceeded timeout,
              disconnecting. | disconnected due to protocol error. | Socket error on client
              cam-1, disconnecting.                                                          notice
  1764400000: Client cam-1 disconnected, not authorised.    (a refused CONNECT)              notice
  1764400000: Client cam-1 already connected, closing old connection.                       information
  1764400000: Received PUBLISH from cam-1 (d0, q1, r0, m1, 'a/b', ... (5 bytes))             debug
  1764400000: Denied PUBLISH from cam-1 (d0, q1, r0, m2, 'x/y', ... (6 bytes))               debug
  1764400000: Sending PUBLISH to cam-1 (d0, q0, r0, m0, 'a/b/accepted', ... (90 bytes))      debug

It is the one parser of Mosquitto's log: the audit's connection checks read it too
(garrison.detect.audit.sources.parse_log_lines).

The debug lines never reach `log_dest topic` (Mosquitto keeps them off `$SYS/broker/log` so
that logging a publish does not publish again, verified here), so the source is a log file
(`log_dest file`), followed by `LogFollower`. `broker-config --metrics-log FILE` writes that
configuration. Subscribes denied by the ACL are not logged by Mosquitto 2.0 at any level, so
authorization failures are denied publishes and refused connections.

Every line is bounded (MAX_LINE bytes; longer ones are skipped) and parsed with anchored
patterns, because client ids and topics are chosen by devices.
"""

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, List, Optional

log = logging.getLogger("garrison.brokerlog")

MAX_LINE = 4096
READ_CHUNK = 256 * 1024  # bytes read per poll: a burst is spread over polls, never read at once

CONNECT = "connect"  # value: source address
CONNECT_REFUSED = "connect-refused"
DISCONNECT = "disconnect"
TAKEOVER = "takeover"  # another connection with the same client id closed this one
PUBLISH_IN = "publish-in"  # device -> broker; topic, size
PUBLISH_DENIED = "publish-denied"
PUBLISH_OUT = "publish-out"  # broker -> device; topic, size


@dataclass(frozen=True)
class BrokerEvent:
    kind: str
    client: str
    time_s: Optional[int]  # the line's epoch timestamp, None when the log has none
    address: Optional[str] = None
    topic: Optional[str] = None
    size: Optional[int] = None
    port: Optional[int] = None  # CONNECT: the client's source port
    username: Optional[str] = None  # CONNECT: the u'...' of the line, when given
    count: int = 1  # how many such events this one stands for (NATS's counters: natsmonitor)


_TS = r"^(?:(?P<ts>\d{9,11})(?:\.\d+)?: )?"
_CID = r"(?P<cid>\S{1,256})"
_PATTERNS = (
    (
        CONNECT,
        re.compile(
            _TS + r"New client connected from (?P<addr>\S+):(?P<port>\d+) as " + _CID + r" \((?P<flags>[^)]*)\)"
        ),
    ),
    (TAKEOVER, re.compile(_TS + r"Client " + _CID + r"(?: \[\S+\])? already connected, closing old connection")),
    (CONNECT_REFUSED, re.compile(_TS + r"Client " + _CID + r"(?: \[\S+\])? disconnected, not authori[sz]ed\.?$")),
    (
        DISCONNECT,
        re.compile(
            _TS + r"(?:Client " + _CID + r"(?: \[\S+\])? (?:disconnected|closed its connection|"
            r"has exceeded timeout)"
            r"|Socket error on client " + _CID.replace("cid", "cid2") + r", disconnecting)"
        ),
    ),
    (
        PUBLISH_IN,
        re.compile(
            _TS + r"Received PUBLISH from " + _CID + r" \(d\d, q\d, r\d, m\d+, '(?P<topic>.*)', "
            r"\.\.\. \((?P<size>\d+) bytes\)\)$"
        ),
    ),
    (
        PUBLISH_DENIED,
        re.compile(
            _TS + r"Denied PUBLISH from " + _CID + r" \(d\d, q\d, r\d, m\d+, '(?P<topic>.*)', "
            r"\.\.\. \((?P<size>\d+) bytes\)\)$"
        ),
    ),
    (
        PUBLISH_OUT,
        re.compile(
            _TS + r"Sending PUBLISH to " + _CID + r" \(d\d, q\d, r\d, m\d+, '(?P<topic>.*)', "
            r"\.\.\. \((?P<size>\d+) bytes\)\)$"
        ),
    ),
)
_USER = re.compile(r"u'(?P<user>[^']*)'")
# cheap prefilter: the words one of the patterns needs (most debug lines are PUBACKs, PINGs, ...)
_WORDS = ("New client connected", "Client ", "Socket error", "PUBLISH")


def parse_line(line: str) -> Optional[BrokerEvent]:
    """The event a log line records, or None for every other line."""
    if len(line) > MAX_LINE or not any(word in line for word in _WORDS):
        return None
    line = line.rstrip("\r\n")
    for kind, pattern in _PATTERNS:
        match = pattern.match(line)
        if match is None:
            continue
        groups = match.groupdict()
        client = groups.get("cid") or groups.get("cid2")
        if not client or client == "<unknown>":
            return None
        ts = int(groups["ts"]) if groups.get("ts") else None
        if kind == CONNECT:
            user = _USER.search(groups["flags"])
            return BrokerEvent(
                kind,
                client,
                ts,
                address=groups["addr"],
                port=int(groups["port"]),
                username=user["user"] if user else None,
            )
        if kind in (PUBLISH_IN, PUBLISH_DENIED, PUBLISH_OUT):
            return BrokerEvent(kind, client, ts, topic=groups["topic"], size=int(groups["size"]))
        return BrokerEvent(kind, client, ts)
    return None


def parse_lines(lines: Iterable[str]) -> List[BrokerEvent]:
    return [event for event in map(parse_line, lines) if event is not None]


class LogFollower:
    """Follows a Mosquitto log file (like `tail -F`) on its own thread and hands each event to
    `sink(event)`. Starts at the end of the file (what happened before the engine started is not
    re-counted); a rotated (new inode) or truncated file is read from its start."""

    def __init__(self, path: str, sink: Callable[[BrokerEvent], None], poll_s: float = 0.2):
        self.path = str(path)
        self.sink = sink
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._file: Optional[BinaryIO] = None
        self._inode: Optional[int] = None  # -1: the file was missing when first looked for
        self._partial = b""
        self.lines = 0

    def start(self) -> "LogFollower":
        self._open(from_end=True)
        self._thread = threading.Thread(target=self._run, name="broker-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._file:
            self._file.close()

    def _open(self, from_end: bool) -> None:
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            if self._inode is None:
                log.warning(
                    "broker log %s not readable yet (%s); cloud-side metrics wait for it",
                    self.path,
                    exc.strerror or exc,
                )
                self._inode = -1
            return
        if self._file:
            self._file.close()
        self._file = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        self._partial = b""
        if from_end:
            handle.seek(0, os.SEEK_END)

    def poll(self) -> int:
        """Read what was appended since the last poll (at most READ_CHUNK bytes); returns the
        number of complete lines read."""
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            inode = None
        if self._file is None or (inode is not None and inode != self._inode):
            self._open(from_end=False if self._file is not None or self._inode == -1 else True)
            if self._file is None:
                return 0
        if os.fstat(self._file.fileno()).st_size < self._file.tell():
            self._file.seek(0)  # truncated (logrotate copytruncate)
            self._partial = b""
        data = self._file.read(READ_CHUNK)
        if not data:
            return 0
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = b""  # an endless line: drop it
        for raw in lines:
            event = parse_line(raw.decode("utf-8", "replace"))
            if event is not None:
                self.sink(event)
        self.lines += len(lines)
        return len(lines)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                read = self.poll()
            except Exception:
                log.exception("reading the broker log %s failed; retrying", self.path)
                read = 0
            if not read:
                self._stop.wait(self.poll_s)
