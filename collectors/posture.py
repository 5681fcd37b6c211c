"""Device posture: cheap hardening checks, reported as Device Defender custom metrics.

    posture:insecure_services            string_list  "telnet:23/tcp", "tftp:69/udp", "mqtt:1883/tcp" ...
    posture:ssh_permit_root_login        number       1 when sshd_config permits root to log in with a password
    posture:ssh_password_authentication  number       1 when sshd accepts passwords (its default)
    posture:weak_password_accounts       string_list  "pi:default-password", "guest:empty-password"
    posture:world_writable_path_files    string_list  files anyone may write in the system PATH directories
    posture:sysctl_unhardened            string_list  "kernel.randomize_va_space=0", ...

Names follow AWS's custom metric rules ([a-zA-Z0-9:_-], not "aws:"), so the same report works
against AWS IoT and security profiles can alarm on them. Every check is switchable (`checks=`);
a check that cannot run (no sshd_config, /etc/shadow unreadable) leaves its metric out rather
than report a guess.

Privileges: everything but the account check runs as any user. Reading /etc/shadow needs root
(or the shadow group); without it `weak_password_accounts` is omitted. Default passwords are
verified with the C library's crypt(3) through Python's `crypt` module (deprecated in 3.11,
removed in 3.13): where it is missing only empty passwords are reported.

All paths are under `root` ("/" by default), so tests and fixture trees work like node_exporter's.
The checks cost tens of milliseconds (docs/audit.md has the numbers); results are kept for
`min_interval` seconds (default one hour) and re-reported in between.
"""

import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from garrison.collectors._procfs import ProcNet
from garrison.collectors.base import CollectorResult, os_text, timed

PREFIX = "posture:"
METRICS = {
    key: PREFIX + key
    for key in (
        "insecure_services",
        "ssh_permit_root_login",
        "ssh_password_authentication",
        "weak_password_accounts",
        "world_writable_path_files",
        "sysctl_unhardened",
    )
}
CHECKS = ("services", "ssh", "accounts", "path", "sysctl")

INSECURE_TCP = {21: "ftp", 23: "telnet", 512: "rexec", 513: "rlogin", 514: "rsh"}
INSECURE_UDP = {69: "tftp"}
MQTT_PLAIN = 1883
PATH_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
MAX_PATH_ENTRIES = 20000
MAX_REPORTED = 50
# Well-known default passwords of device images (Raspberry Pi OS, vendor images, ...).
DEFAULT_PASSWORDS = {
    "pi": ("raspberry",),
    "root": ("root", "toor", "admin", "password"),
    "admin": ("admin", "password"),
    "ubuntu": ("ubuntu",),
    "debian": ("debian", "temppwd"),
    "user": ("user", "password"),
    "orangepi": ("orangepi",),
    "odroid": ("odroid",),
}
# sysctl -> (file under /proc/sys, predicate of a hardened value, the value we want)
SYSCTLS = {
    "kernel.randomize_va_space": (lambda v: v == "2", "2"),
    "kernel.kptr_restrict": (lambda v: v in ("1", "2"), "1"),
    "kernel.dmesg_restrict": (lambda v: v == "1", "1"),
    "net.ipv4.ip_forward": (lambda v: v == "0", "0"),
    "fs.protected_symlinks": (lambda v: v == "1", "1"),
    "fs.protected_hardlinks": (lambda v: v == "1", "1"),
}
_TCP_LISTEN = 1 << 10
_UDP_BOUND = 1 << 7


def insecure_services(root: Path) -> List[str]:
    proc = ProcNet(str(root / "proc"))
    found = set()
    for _family, address, port, _ra, _rp, _inode in proc.query("tcp", _TCP_LISTEN):
        if port in INSECURE_TCP:
            found.add(f"{INSECURE_TCP[port]}:{port}/tcp")
        elif port == MQTT_PLAIN and not _loopback(address):
            found.add(f"mqtt:{port}/tcp")
    for _family, _address, port, _ra, _rp, _inode in proc.query("udp", _UDP_BOUND):
        if port in INSECURE_UDP:
            found.add(f"{INSECURE_UDP[port]}:{port}/udp")
    return sorted(found)


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")


def _sshd_options(root: Path) -> Optional[Dict[str, str]]:
    """sshd's first-value-wins options from sshd_config and its Include files; None: no sshd."""
    main = root / "etc/ssh/sshd_config"
    if not main.is_file():
        return None
    options: Dict[str, str] = {}
    budget = [64]  # files read, against Include loops

    def read(path: Path) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            return
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) < 2:
                continue
            key = words[0].lower()
            if key == "match":
                return  # Match blocks apply to some connections only; the global settings end here
            if key == "include":  # read in place: sshd takes the first value it meets
                for pattern in words[1:]:
                    base = Path(pattern) if pattern.startswith("/") else Path("etc/ssh") / pattern
                    for included in sorted((root / str(base).lstrip("/")).parent.glob(base.name)):
                        read(included)
                continue
            options.setdefault(key, words[1].lower())

    read(main)
    return options


def ssh(root: Path) -> Dict[str, int]:
    options = _sshd_options(root)
    if options is None:
        return {}
    return {
        METRICS["ssh_permit_root_login"]: int(options.get("permitrootlogin", "prohibit-password") == "yes"),
        METRICS["ssh_password_authentication"]: int(options.get("passwordauthentication", "yes") == "yes"),
    }


def _crypt():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt

            return crypt.crypt
        except ImportError:  # Python 3.13+: only empty passwords are found
            return None


def weak_accounts(root: Path) -> Optional[List[str]]:
    """None when /etc/shadow cannot be read (not root)."""
    try:
        text = (root / "etc/shadow").read_text(errors="replace")
    except OSError:
        return None
    check = _crypt()
    found = []
    for line in text.splitlines()[:10000]:
        fields = line.split(":")
        if len(fields) < 2:
            continue
        user, hashed = fields[0], fields[1]
        if hashed == "":
            found.append(f"{user}:empty-password")
        elif check and user in DEFAULT_PASSWORDS and hashed.startswith("$"):
            for password in DEFAULT_PASSWORDS[user]:
                try:
                    if check(password, hashed) == hashed:
                        found.append(f"{user}:default-password")
                        break
                except (OSError, ValueError):  # a hash scheme this libc does not know
                    break
    return found


def world_writable(root: Path, dirs: Iterable[str] = PATH_DIRS) -> List[str]:
    found: List[str] = []
    budget = MAX_PATH_ENTRIES
    seen_dirs = set()
    for rel in dirs:
        directory = root / rel
        try:
            info = os.stat(directory)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen_dirs:  # /bin -> /usr/bin on merged-/usr systems
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            found.append("/" + rel)
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            for entry in entries:
                budget -= 1
                if budget < 0:
                    break
                try:
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError:
                    continue
                if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH:
                    found.append(os_text(f"/{rel}/{entry.name}"))  # anyone may name a file in a 0777 dir
    return sorted(found)[:MAX_REPORTED]


def sysctl(root: Path) -> List[str]:
    found = []
    for name, (hardened, _wanted) in SYSCTLS.items():
        try:
            value = (root / "proc/sys" / name.replace(".", "/")).read_text().strip()
        except OSError:
            continue  # not on this kernel
        if not hardened(value):
            found.append(f"{name}={value}")
    return found


def collect_posture(root: str = "/", checks: Iterable[str] = CHECKS) -> Dict[str, Any]:
    """The posture custom metrics {name: value} for the enabled checks."""
    root_path = Path(root)
    enabled = set(checks)
    metrics: Dict[str, Any] = {}
    if "services" in enabled:
        metrics[METRICS["insecure_services"]] = insecure_services(root_path)
    if "ssh" in enabled:
        metrics.update(ssh(root_path))
    if "accounts" in enabled:
        accounts = weak_accounts(root_path)
        if accounts is not None:
            metrics[METRICS["weak_password_accounts"]] = accounts
    if "path" in enabled:
        metrics[METRICS["world_writable_path_files"]] = world_writable(root_path)
    if "sysctl" in enabled:
        metrics[METRICS["sysctl_unhardened"]] = sysctl(root_path)
    # typed, so that an empty list is still a string_list (report.custom_metric passes dicts through)
    return {name: {"string_list": value} if isinstance(value, list) else value for name, value in metrics.items()}


class PostureCollector:
    """The agent's `posture` collector: custom metrics, recomputed every `min_interval` seconds."""

    name = "posture"

    def __init__(self, root: str = "/", checks: Iterable[str] = CHECKS, min_interval: float = 3600.0):
        unknown = set(checks) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown posture check {sorted(unknown)[0]!r} (choose from {', '.join(CHECKS)})")
        self.root, self.checks, self.min_interval = root, tuple(checks), min_interval
        self._cached: Optional[Dict[str, Any]] = None
        self._at = 0.0

    def collect(self) -> CollectorResult:
        now = time.monotonic()
        if self._cached is not None and now - self._at < self.min_interval:
            return CollectorResult(self.name, dict(self._cached))
        result = timed(self.name, lambda: collect_posture(self.root, self.checks))
        if result.success:
            self._cached, self._at = dict(result.data), now
        return result
