"""A bounded on-disk spool of encoded reports, oldest first.

One file per report, named by its zero-padded report id and format (`00000001732550000000.json`),
written atomically (garrison.agent.statefile.atomic_write), so a kill -9 at any moment leaves only
complete reports (stray temporary files are removed at start). Reports leave the spool only
once the broker acknowledged them. When a bound (count, bytes, age) is hit the oldest reports
are dropped; drops are counted and logged.
"""
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from garrison.agent.statefile import atomic_write

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{20})\.(json|cbor)$")


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    report_id: int
    fmt: str
    size: int
    mtime: float


class Spool:
    def __init__(self, directory: Path, max_reports: int = 1000, max_bytes: int = 16 * 1024 * 1024,
                 max_age: float = 7 * 86400.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.dropped = 0          # reports dropped since this process started
        self._unreported = 0      # drops not yet announced in a report
        for stray in self.directory.glob(".*.tmp"):
            stray.unlink()        # a write interrupted by a crash: its report was never spooled

    def entries(self) -> List[SpoolEntry]:
        """Spooled reports, oldest (lowest report id) first."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if not match:
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append(SpoolEntry(path, int(match.group(1)), match.group(2), stat.st_size, stat.st_mtime))
        found.sort(key=lambda entry: entry.report_id)
        return found

    def __len__(self) -> int:
        return len(self.entries())

    def add(self, report_id: int, fmt: str, payload: bytes) -> SpoolEntry:
        path = self.directory / f"{report_id:020d}.{fmt}"
        atomic_write(path, payload)
        self.enforce_bounds()
        return SpoolEntry(path, report_id, fmt, len(payload), time.time())

    def read(self, entry: SpoolEntry) -> Optional[bytes]:
        try:
            return entry.path.read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, entry: SpoolEntry) -> None:
        try:
            entry.path.unlink()
        except FileNotFoundError:
            pass

    def enforce_bounds(self, now: Optional[float] = None) -> int:
        """Drop the oldest reports beyond the bounds; returns how many were dropped."""
        now = time.time() if now is None else now
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        dropped = 0
        # Never drop the newest report for size alone: it is the one that carries the drop count.
        while entries and (len(entries) > self.max_reports or (total > self.max_bytes and len(entries) > 1)
                           or now - entries[0].mtime > self.max_age):
            oldest = entries.pop(0)
            self.remove(oldest)
            total -= oldest.size
            dropped += 1
        if dropped:
            self.dropped += dropped
            self._unreported += dropped
            log.warning("spool full: dropped the %d oldest report(s) (%d dropped since start)",
                        dropped, self.dropped)
        return dropped

    def take_unreported_drops(self) -> int:
        """Drops not yet announced; the caller puts them in the next report."""
        count, self._unreported = self._unreported, 0
        return count

    def give_back_drops(self, count: int) -> None:
        """Undo take_unreported_drops when the report that would carry them was not built."""
        self._unreported += count
