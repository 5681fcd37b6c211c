"""Messages the engine gave up on, kept for the operator; and which messages were in flight.

A report that fails to be handled again and again (handling raises, or the engine process dies
while handling it) must not be redelivered by the broker forever: after `max_attempts` it is
written here, logged, answered InternalError and acknowledged. One JSON file per message in a
directory next to the database (`DB.dead-letters/`, mode 0700, files 0600), so setting a
message aside never depends on the database that may be what fails. `garrison-detect
dead-letters` lists them.

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
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

log = logging.getLogger("garrison.ingest")

MAX_ATTEMPTS = 3


def digest(topic: bytes, payload: bytes) -> str:
    """A message's identity across redeliveries (same topic, same bytes)."""
    return hashlib.blake2b(bytes(topic) + b"\0" + bytes(payload), digest_size=16).hexdigest()


class DeadLetters:
    """The dead-letter directory."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def put(self, topic: bytes, payload: bytes, reason: str, attempts: int, now_ms: Optional[int] = None) -> Path:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        key = digest(topic, payload)
        path = self.directory / f"{now_ms}-{key}.json"
        record = {
            "time_ms": now_ms,
            "digest": key,
            "topic": bytes(topic).decode("utf-8", "replace"),
            "reason": reason,
            "attempts": attempts,
            "size": len(payload),
            "payload_base64": base64.b64encode(bytes(payload)).decode(),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        log.error(
            "dead-lettered a message on %s after %d failed attempts (%s): kept in %s",
            record["topic"][:160],
            attempts,
            reason[:200],
            path,
        )
        return path

    def list(self) -> List[Dict[str, Any]]:
        """Every dead letter, oldest first, without its payload."""
        out = []
        if not self.directory.is_dir():
            return out
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = json.loads(path.read_text())
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
        self.suspects: Dict[str, int] = {}  # digest -> times it was in flight when the process died
        try:
            crashed = json.loads(self.path.read_text())
        except (OSError, ValueError):
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
            log.warning("cannot write %s: %s", self.path, exc)
