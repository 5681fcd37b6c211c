"""Small durable files in the state directory: atomic writes and the last report id.

A write goes to a temporary file in the same directory, is fsynced, then renamed over the
target and the directory fsynced, so a crash (kill -9, power loss) leaves the old or the new
content, never a torn file.
"""
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from garrison.agent import report

log = logging.getLogger(__name__)


def fsync_dir(directory: Path) -> None:
    fd = os.open(str(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> Optional[Any]:
    """The JSON content of `path`, or None if missing or unreadable (logged)."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, separators=(",", ":")).encode())


class ReportIds:
    """Increasing report ids that survive restarts (STATE_DIR/last_report_id)."""

    def __init__(self, state_dir: Path, persist: bool = True):
        self.path = Path(state_dir) / "last_report_id"
        self.persist = persist
        stored = read_json(self.path)
        self.last = stored if isinstance(stored, int) and stored > 0 else 0

    def next(self) -> int:
        self.last = report.next_report_id(self.last)
        if self.persist:
            write_json(self.path, self.last)
        return self.last
