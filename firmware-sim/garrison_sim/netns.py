"""Network namespaces for namespaced "devices": a cloud namespace and devices joined by veth pairs.

Layout (every address exists only inside namespaces this module created):

    device i  eth0 10.213.i.2/24 ──veth── v{i} 10.213.i.1/24  cloud
                                                             lo: 203.0.113.66 (the C2 "range")
                                                             10.213.200.0/24 routed to lo (scan targets)

`inside(name)` moves the calling thread into a namespace for the duration of a `with` block, so
sockets created there belong to that namespace (they stay there when the thread moves back).
"""

import contextlib
import ctypes
import logging
import os
import subprocess
import uuid
from typing import Dict, List

log = logging.getLogger("garrison.sim.netns")

CLONE_NEWNET = 0x40000000
CLOUD_ADDRESS = "10.213.{i}.1"
DEVICE_ADDRESS = "10.213.{i}.2"
C2_SERVER = "203.0.113.66"
SCAN_RANGE = "10.213.200.0/24"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
    elif _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(name: str):
    """Run the block in network namespace `name` (this thread only)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def ip(*argv: str, netns: str = "") -> str:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


class Topology:
    """A cloud namespace and N device namespaces, removed by `close()` (always call it)."""

    def __init__(self, device_names: List[str], prefix: str = "gsim"):
        self.run_id = uuid.uuid4().hex[:6]
        self.cloud = f"{prefix}-{self.run_id}-cloud"
        self.devices: Dict[str, str] = {}  # device name -> namespace
        self.addresses: Dict[str, str] = {}  # device name -> its cloud-side gateway address
        self._made: List[str] = []
        try:
            self._add_ns(self.cloud)
            ip("addr", "add", f"{C2_SERVER}/32", "dev", "lo", netns=self.cloud)
            ip("route", "add", "local", SCAN_RANGE, "dev", "lo", netns=self.cloud)
            for i, name in enumerate(device_names, start=1):
                ns = f"{prefix}-{self.run_id}-d{i}"
                self._add_ns(ns)
                ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"v{i}", "netns", self.cloud)
                ip("addr", "add", f"{DEVICE_ADDRESS.format(i=i)}/24", "dev", "eth0", netns=ns)
                ip("addr", "add", f"{CLOUD_ADDRESS.format(i=i)}/24", "dev", f"v{i}", netns=self.cloud)
                ip("link", "set", "eth0", "up", netns=ns)
                ip("link", "set", f"v{i}", "up", netns=self.cloud)
                ip("route", "add", "default", "via", CLOUD_ADDRESS.format(i=i), netns=ns)
                self.devices[name] = ns
                self.addresses[name] = CLOUD_ADDRESS.format(i=i)
        except Exception:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("link", "set", "lo", "up", netns=name)

    def exec_argv(self, ns: str, argv: List[str]) -> List[str]:
        return ["ip", "netns", "exec", ns] + list(argv)

    def close(self) -> None:
        """Delete every namespace made (their veth pairs go with them)."""
        for name in reversed(self._made):
            done = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True)
            if done.returncode != 0:
                log.warning("could not delete namespace %s: %s", name, done.stderr.strip())
        self._made.clear()


def supported() -> bool:
    """Root, iproute2, and namespaces that can be made here."""
    if os.geteuid() != 0:
        return False
    probe = f"gsim-probe-{os.getpid()}"
    try:
        ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return ok
