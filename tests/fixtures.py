"""Real parts for tests: a Mosquitto broker, TLS certificates, network namespaces.

Importable helpers (used by tests/conftest.py fixtures, benchmarks and firmware-sim alike).
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


_handed_out: set = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and never one this process handed out before.

    The caller's server binds it later, and ports are often picked together before any is bound
    (a NATS cluster takes a dozen): the kernel picks bind(0) ports at random, so two picks can
    be the same port (a 12-port cluster did about once in 250 starts), and the second server
    then fails to start."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port left that this process has not handed out already")


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", step: float = 0.05):
    """Poll `predicate` until it returns something truthy, and return that.

    A generous bound against a stuck test, not a timing check: raises AssertionError on timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Certs:
    """A fleet CA (the product's, garrison.detect.ops.pki.FleetCA), a server certificate for
    localhost/127.0.0.1 and client certificates, as files."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str):
        """(cert, key) paths for a client whose certificate CN is `name`, signed by the CA (the
        engine's default identity gets the engine's certificate, as `pki engine` issues it)."""
        from garrison.detect.ops.pki import DEFAULT_ENGINE_IDENTITY, FleetCA
        ca = FleetCA(self.dir)
        engine = name == DEFAULT_ENGINE_IDENTITY
        cert, key = (self.dir / "engine.crt", self.dir / "engine.key") if engine else ca.thing_paths(name)
        if not cert.exists():
            ca.issue_engine(name, days=2) if engine else ca.issue_thing(name, days=2)
        return cert, key


def make_certs(directory: Path) -> Certs:
    """A fresh fleet CA and a localhost server certificate in `directory` (garrison-detect pki)."""
    from garrison.detect.ops.pki import FleetCA
    ca = FleetCA(directory)
    ca.init(days=2, name="Garrison test CA")
    server_cert, server_key = ca.issue_server(["localhost", "127.0.0.1"], days=2)
    return Certs(Path(directory), ca.cert_path, server_cert, server_key)


class Mosquitto:
    """A real Mosquitto broker on a free loopback port, optionally TLS (and mutual TLS): the
    product's local broker launcher (garrison.detect.ops.broker) with the tests' settings.

    `extra_config` lines are appended to the listener's configuration (e.g. an ACL file).
    `persistent` keeps sessions and queued messages across a restart, as production brokers do.
    """

    def __init__(self, workdir: Path, certs: Optional[Certs] = None, require_certificate: bool = False,
                 extra_config: str = "", persistent: bool = False):
        from garrison.detect.ops import broker
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = broker.HOST
        self.port = free_port()
        self.certs = certs
        tls = broker.TlsListener(certs.ca, certs.server_cert, certs.server_key, require_certificate) if certs else None
        self.config = broker.mosquitto_config(self.workdir, self.port, persistent=persistent, tls=tls,
                                              extra_config=extra_config, log_types=("error", "warning"))
        self.log = self.workdir / "mosquitto.log"
        self._broker = None
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.certs else 'mqtt'}://{self.host}:{self.port}"

    def start(self) -> "Mosquitto":
        from garrison.detect.ops import broker
        try:
            self._broker = broker.launch("mosquitto", broker.mosquitto_argv(self.config), self.port, self.log,
                                         timeout=10, tls=bool(self.certs))
        except broker.BrokerError as exc:
            raise RuntimeError(str(exc)) from None
        self.proc = self._broker.proc
        return self

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
        self._broker = self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class NetNamespace:
    """A network namespace this test created (`ip netns add`), removed on close."""

    def __init__(self, prefix: str = "gt"):
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def run(self, *argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=check,
                              capture_output=True, text=True, **kwargs)

    def popen(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def netns_supported() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"gt-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return ok


def scratch_dir(prefix: str = "garrison-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
