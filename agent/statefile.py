"""Small durable files in the state directory: atomic writes and the last report id.

A write goes to a temporary file in the same directory, is fsynced, then renamed over the
target and the directory fsynced, so a crash (kill -9, power loss) leaves the old or the new
content, never a torn file.

The state directory holds reports and counters that only the agent may read: directories are
made 0700 and files 0600 whatever the umask (the agent may be run by hand as root under umask
022). A temporary file is created with O_EXCL, and nothing in the state directory is followed
through a symbolic link: files are opened with O_NOFOLLOW, and an entry that is a symlink is
refused. The state directory itself may be a link (systemd's DynamicUser makes
/var/lib/NAME one, into /var/lib/private).
"""

import errno
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Optional

from garrison.agent import report

log = logging.getLogger(__name__)
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
TEMP_SUFFIX = ".tmp"  # temporary files are named .NAME.PID.RANDOM.tmp


def _symlink_refused(path: Path) -> OSError:
    return OSError(errno.ELOOP, "is a symbolic link; refused in the state directory", str(path))


def private_dir(path: Path, allow_symlink: bool = False) -> Path:
    """Create directory `path` (and missing parents) 0700 whatever the umask, and tighten it to
    0700 when it exists, is ours and is open to others. A symlink is refused unless
    `allow_symlink` (for the state directory itself). Raises OSError."""
    path = Path(path)
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)  # the umask can only remove bits from 0700
    except FileExistsError:
        pass
    except FileNotFoundError:  # missing parents: made as usual, the leaf 0700
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, PRIVATE_DIR_MODE)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        if not allow_symlink:
            raise _symlink_refused(path)
        info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def fsync_dir(directory: Path) -> None:
    fd = os.open(str(directory), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably, as a 0600 file. Refuses (OSError) a
    `path` that is a symlink; on any failure (a full disk) no temporary file is left behind."""
    path = Path(path)
    if os.path.islink(path):
        raise _symlink_refused(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}")
        try:
            fd = os.open(str(tmp), flags, PRIVATE_FILE_MODE)
            break
        except FileExistsError:  # someone else's file (or link) by that name: never reuse it
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(tmp))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def remove_stray_temp_files(directory: Path) -> int:
    """Remove temporary files left by an interrupted write (a crash, a full disk); how many.
    Only the agent writes into its state directory, so any such file is a leftover."""
    removed = 0
    for stray in Path(directory).glob(".*" + TEMP_SUFFIX):
        try:
            stray.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def read_bytes(path: Path) -> bytes:
    """The content of regular file `path`, never through a symlink (OSError otherwise)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink_refused(Path(path)) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file; refused in the state directory", str(path))
        return handle.read()


def read_json(path: Path) -> Optional[Any]:
    """The JSON content of `path`, or None if missing or unreadable (logged)."""
    try:
        return json.loads(read_bytes(Path(path)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, separators=(",", ":")).encode())


def try_write_json(path: Path, value: Any) -> bool:
    """write_json that never raises: False when the write failed (a full disk, a refused
    symlink). For state whose loss costs little: the caller keeps it in memory and the report
    still goes out; the spool says once that the state directory cannot be written."""
    try:
        write_json(path, value)
        return True
    except OSError as exc:
        log.debug("could not save %s: %s; kept in memory", path, exc)
        return False


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
            try_write_json(self.path, self.last)  # unsaved, ids still increase (epoch ms)
        return self.last
