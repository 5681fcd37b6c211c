"""Messages the engine gave up on, kept for the operator; and which messages were in flight.

A report that fails to be handled again and again (handling raises, or the engine process dies
while handling it) must not be redelivered by the broker forever: after `max_attempts` it is
written here, logged, answered InternalError and acknowledged. One JSON file per message in a
directory next to the database (`DB.dead-letters/`, or `serve --dead-letters DIR`; mode 0700,
files 0600), so setting a message aside never depends on the database that may be what fails.
`garrison-detect dead-letters` lists them. The directory is bounded (`[dead_letters]` in the
engine's config: 1,000 files, 64 MiB by default), so a device whose reports keep failing cannot
fill the disk: see `DeadLetters`.

`InFlight` notices the other kind of failure, a process that dies (OOM kill, segfault) while
handling a message: before a batch is handled the digests of its messages are written to a
small file; a clean finish empties it. At the next start, what is still in it was being
handled when the process died: those messages are suspects, handled one at a time, and one that
was in flight `max_attempts` times is dead-lettered without being handled again.
"""

import base64
import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from garrison.detect.ingest.frontdoor import _RateLimitedLog
from garrison.wire.limits import MAX_PAYLOAD_BYTES

log = logging.getLogger("garrison.ingest")

MAX_ATTEMPTS = 3
MAX_FILES = 1000
MAX_BYTES = 64 * 2**20
FULL_LOG_EVERY_S = 60.0  # a full directory says so at most this often (with the count not kept)


def digest(topic: bytes, payload: bytes) -> str:
    """A message's identity across redeliveries (same topic, same bytes)."""
    h = hashlib.blake2b(topic, digest_size=16)  # fed in parts: no copy of a 128 KB payload per message
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


_IN_FLIGHT_MAX_BYTES = 64 * 1024  # a batch's digests take about 1 KB
_DEAD_LETTER_MAX_BYTES = 2**20  # a dead letter: at most a 128 KB payload, in base64, and its record


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file, not through a symlink, never waiting: the files
    sit in a directory the operator chose (--dead-letters), where a symlink to /dev/zero or a
    FIFO made the engine run out of memory or hang at every start (as the write, O_NOFOLLOW),
    and hung `garrison-detect dead-letters`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


class DeadLetterCounts:
    """What became of the dead letters since the start: `kept`, and `dropped` for want of room
    (GET /metrics reads both); a drop is logged at most once every FULL_LOG_EVERY_S, with the count.
    Shared by the directory (DeadLetters) and the NATS stream's caps (jetstream.DeadLetterCaps)."""

    def __init__(self) -> None:
        self.kept = 0
        self.dropped = 0
        self._full_logged = -FULL_LOG_EVERY_S

    def _drop(self) -> bool:
        """Count a dead letter not kept; True when the drop is to be logged now."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._full_logged < FULL_LOG_EVERY_S:
            return False
        self._full_logged = now
        return True


class DeadLetters(DeadLetterCounts):
    """The dead-letter directory, bounded: at most `max_files` files and `max_bytes` bytes.

    When it is full a new dead letter is not kept: `put` returns None, counts it in `dropped` and
    logs (at most once a minute, with the count). The caller still answers and acknowledges the
    message, so it is never redelivered forever. The newest is refused rather than the oldest
    dropped: the first failures are the evidence the operator wants (what tripped the bug, and
    when it started), and a device flooding the directory must not be able to push them out.
    Deleting files makes room; the next `put` sees it, as it scans the directory each time
    (cheap: it holds at most max_files, and each dead letter costs max_attempts failed handlings).
    A payload is kept up to the wire limit (128 KB; the front door refuses larger ones first).
    """

    def __init__(self, directory: str, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES):
        self.directory = Path(directory)
        self.max_files = max_files
        self.max_bytes = max_bytes
        super().__init__()

    def usage(self) -> Tuple[int, int]:
        """(files, bytes) of the dead letters in the directory."""
        files = size = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            pass
        return files, size

    def put(
        self, topic: bytes, payload: bytes, reason: str, attempts: int, now_ms: Optional[int] = None
    ) -> Optional[Path]:
        """Keep a dead letter; None when the directory is full (logged and counted, not kept)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        key = digest(topic, payload)
        path = self.directory / f"{now_ms}-{key}.json"
        kept = bytes(payload[:MAX_PAYLOAD_BYTES])
        record: Dict[str, Any] = {
            "time_ms": now_ms,
            "digest": key,
            "topic": bytes(topic).decode("utf-8", "replace"),
            "reason": reason,
            "attempts": attempts,
            "size": len(payload),
            "truncated": len(kept) < len(payload),
            "payload_base64": base64.b64encode(kept).decode(),
        }
        data = json.dumps(record).encode()
        files, size = self.usage()
        if files + 1 > self.max_files or size + len(data) > self.max_bytes:
            self._refuse(record, files, size)
            return None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.kept += 1
        log.error(
            "dead-lettered a message on %s after %d failed attempts (%s): kept in %s",
            record["topic"][:160],
            attempts,
            reason[:200],
            path,
        )
        return path

    def _refuse(self, record: Dict[str, Any], files: int, size: int) -> None:
        if not self._drop():
            return
        log.error(
            "dead-letter directory %s is full (%d files, %d bytes; at most %d files, %d bytes): "
            "a message on %s that failed %d times (%s) is answered and acknowledged but not kept; "
            "%d not kept since the engine started. Read and delete old ones (garrison-detect "
            "dead-letters) to make room",
            self.directory,
            files,
            size,
            self.max_files,
            self.max_bytes,
            record["topic"][:160],
            record["attempts"],
            record["reason"][:200],
            self.dropped,
        )

    def list(self) -> List[Dict[str, Any]]:
        """Every dead letter, oldest first, without its payload."""
        out: List[Dict[str, Any]] = []
        if not self.directory.is_dir():
            return out
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = json.loads(_read_regular(path, _DEAD_LETTER_MAX_BYTES))
            except (OSError, ValueError):
                continue
            record.pop("payload_base64", None)
            record["file"] = str(path)
            out.append(record)
        return out


class InFlight:
    """The digests of the messages being handled, in a small file (see the module docstring)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._fd: Optional[int] = None
        self._log_failure = _RateLimitedLog(every_s=FULL_LOG_EVERY_S)  # twice per batch: a line a minute
        self.suspects: Dict[str, int] = {}  # digest -> times it was in flight when the process died
        try:
            crashed = json.loads(_read_regular(self.path, _IN_FLIGHT_MAX_BYTES))
        except FileNotFoundError:
            crashed = {}
        except OSError as exc:
            log.warning("cannot read %s (no message is taken for a suspect): %s", self.path, exc)
            crashed = {}
        except ValueError:  # torn: no suspects
            crashed = {}
        if isinstance(crashed, dict):
            self.suspects = {k: int(v) + 1 for k, v in crashed.items() if isinstance(v, int)}
        if self.suspects:
            log.warning(
                "%d message(s) were being handled when the engine last stopped without "
                "finishing: handling them one at a time",
                len(self.suspects),
            )

    def begin(self, digests: Iterable[str]) -> None:
        self._write({d: self.suspects.get(d, 0) for d in digests})

    def end(self) -> None:
        self._write({})

    def cleared(self, key: str) -> None:
        """A suspect was handled without the process dying."""
        self.suspects.pop(key, None)

    def _write(self, content: Dict[str, int]) -> None:
        # one pwrite and a truncate on a file kept open (once per batch, so cheap); no fsync: it
        # must survive the process, not the machine. A torn file reads as no suspects.
        data = json.dumps(content).encode()
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as exc:
            self._log_failure(
                logging.WARNING,
                "write",
                "cannot write %s (a report that kills the engine would not be recognised): %s",
                self.path,
                exc,
            )
