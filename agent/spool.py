"""A bounded on-disk spool of encoded reports, oldest first.

One file per report, named by its zero-padded report id and format (`00000001732550000000.json`),
written atomically (garrison.agent.statefile.atomic_write), so a kill -9 at any moment leaves only
complete reports (stray temporary files are removed at start). Reports leave the spool only
once an answer settles them (agent.delivery). When a bound (count, bytes, age) is hit the oldest reports
are dropped; drops are counted and logged.

When the spool cannot be written (a full disk) a report is held in memory instead (at most
MEMORY_MAX_REPORTS / MEMORY_MAX_BYTES, the newest win) so it is still sent; the spool says once
that spooling is off and once when it is back, and then writes the held reports to disk.
"""

import logging
import re
import time
from stat import S_ISREG
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from garrison.agent.statefile import atomic_write, private_dir, read_bytes

log = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{20})\.(json|cbor)$")
MEMORY_MAX_REPORTS = 16  # held in memory while the disk is full (a report is <= 128 KB)
MEMORY_MAX_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class SpoolEntry:
    path: Optional[Path]  # None: held in memory (the disk was full)
    report_id: int
    fmt: str
    size: int
    mtime: float
    payload: Optional[bytes] = None  # the report, for an entry held in memory


class Spool:
    def __init__(
        self, directory: Path, max_reports: int = 1000, max_bytes: int = 16 * 1024 * 1024, max_age: float = 7 * 86400.0
    ):
        self.directory = private_dir(Path(directory))  # 0700; a symlink is refused
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.dropped = 0  # reports dropped since this process started
        self._unreported = 0  # drops not yet announced in a report
        self._memory: Dict[int, SpoolEntry] = {}  # reports the disk could not take
        self.off = False  # True while writes fail: said once, and once when they work again
        for stray in self.directory.glob(".*.tmp"):
            stray.unlink()  # a write interrupted by a crash: its report was never spooled

    def entries(self) -> List[SpoolEntry]:
        """Spooled reports, oldest (lowest report id) first."""
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if not match:
                continue
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            if not S_ISREG(stat.st_mode):  # a symlink (or else) is never followed: refused, removed
                log.warning("removed %s from the spool: not a regular file (a symlink?)", path.name)
                self.remove_path(path)
                continue
            found.append(SpoolEntry(path, int(match.group(1)), match.group(2), stat.st_size, stat.st_mtime))
        found.extend(self._memory.values())
        found.sort(key=lambda entry: entry.report_id)
        return found

    def __len__(self) -> int:
        return len(self.entries())

    def add(self, report_id: int, fmt: str, payload: bytes) -> SpoolEntry:
        """Spool a report; when the disk refuses it, hold it in memory (it is still sent)."""
        try:
            entry = self._write(report_id, fmt, payload)
        except OSError as exc:
            entry = self._hold(report_id, fmt, payload, exc)
        else:
            if self.off:
                self._back_on()
        self.enforce_bounds()
        return entry

    def _write(self, report_id: int, fmt: str, payload: bytes) -> SpoolEntry:
        path = self.directory / f"{report_id:020d}.{fmt}"
        atomic_write(path, payload)
        return SpoolEntry(path, report_id, fmt, len(payload), time.time())

    def _hold(self, report_id: int, fmt: str, payload: bytes, exc: OSError) -> SpoolEntry:
        if not self.off:
            self.off = True
            log.warning(
                "spooling is off: cannot write to %s (%s); reports are sent from memory "
                "(at most %d held) and are lost if the agent stops before they are answered",
                self.directory,
                exc.strerror or exc,
                MEMORY_MAX_REPORTS,
            )
        entry = SpoolEntry(None, report_id, fmt, len(payload), time.time(), payload)
        self._memory[report_id] = entry
        held = sorted(self._memory)
        while len(held) > 1 and (
            len(held) > MEMORY_MAX_REPORTS or sum(self._memory[i].size for i in held) > MEMORY_MAX_BYTES
        ):
            self._memory.pop(held.pop(0))
            self._count_drops(1)
        return entry

    def _back_on(self) -> None:
        self.off = False
        log.warning("spooling is back on: %s can be written again", self.directory)
        for report_id, held in sorted(self._memory.items()):
            if held.payload is None:  # _hold() always keeps the payload
                raise RuntimeError(f"report {report_id} held in memory without its payload")
            try:
                self._write(report_id, held.fmt, held.payload)
            except OSError:
                return
            del self._memory[report_id]

    def read(self, entry: SpoolEntry) -> Optional[bytes]:
        if entry.path is None:
            held = self._memory.get(entry.report_id)
            return held.payload if held else None
        try:
            return read_bytes(entry.path)
        except FileNotFoundError:
            return None

    def remove(self, entry: SpoolEntry) -> None:
        if entry.path is None:
            self._memory.pop(entry.report_id, None)
        else:
            self.remove_path(entry.path)

    @staticmethod
    def remove_path(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def enforce_bounds(self, now: Optional[float] = None) -> int:
        """Drop the oldest reports beyond the bounds; returns how many were dropped."""
        now = time.time() if now is None else now
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        dropped = 0
        # Never drop the newest report for size alone: it is the one that carries the drop count.
        while entries and (
            len(entries) > self.max_reports
            or (total > self.max_bytes and len(entries) > 1)
            or now - entries[0].mtime > self.max_age
        ):
            oldest = entries.pop(0)
            self.remove(oldest)
            total -= oldest.size
            dropped += 1
        if dropped:
            self._count_drops(dropped)
            log.warning("spool full: dropped the %d oldest report(s) (%d dropped since start)", dropped, self.dropped)
        return dropped

    def _count_drops(self, count: int) -> None:
        self.dropped += count
        self._unreported += count

    def take_unreported_drops(self) -> int:
        """Drops not yet announced; the caller puts them in the next report."""
        count, self._unreported = self._unreported, 0
        return count

    def give_back_drops(self, count: int) -> None:
        """Undo take_unreported_drops when the report that would carry them was not built."""
        self._unreported += count
