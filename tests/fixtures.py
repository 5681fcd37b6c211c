"""Real parts for tests: a Mosquitto broker, TLS certificates, network namespaces.

Importable helpers (used by tests/conftest.py fixtures, benchmarks and firmware-sim alike).
"""
import datetime
import ipaddress
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
    """A CA, a server certificate for localhost/127.0.0.1 and client certificates, as files."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str):
        """(cert, key) paths for a client whose certificate CN is `name`, signed by the CA."""
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if not cert.exists():
            _issue(self.dir, name, cert, key, server=False)
        return cert, key


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(directory: Path, cn: str, cert_path: Path, key_path: Path, server: bool) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)


def make_certs(directory: Path) -> Certs:
    """Generate a fresh CA and a localhost server certificate in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Garrison test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / "ca.key", key)
    certs = Certs(directory, directory / "ca.crt", directory / "server.crt", directory / "server.key")
    _issue(directory, "localhost", certs.server_cert, certs.server_key, server=True)
    return certs


class Mosquitto:
    """A real Mosquitto broker on a free loopback port, optionally TLS (and mutual TLS).

    `extra_config` lines are appended to the listener's configuration (e.g. an ACL file).
    `persistent` keeps sessions and queued messages across a restart, as production brokers do.
    """

    def __init__(self, workdir: Path, certs: Optional[Certs] = None, require_certificate: bool = False,
                 extra_config: str = "", persistent: bool = False):
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.certs = certs
        persistence = ["persistence true", f"persistence_location {self.workdir}/"] if persistent else \
            ["persistence false"]
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true", *persistence,
                 "log_dest stderr", "log_type error", "log_type warning", "max_queued_messages 100000",
                 # no Nagle delay on small packets: an agent waits for each reply before its next report
                 "set_tcp_nodelay true"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to its own user and cannot read our temp files
        if certs:
            lines += [f"cafile {certs.ca}", f"certfile {certs.server_cert}", f"keyfile {certs.server_key}",
                      f"require_certificate {'true' if require_certificate else 'false'}"]
            if require_certificate:
                lines.append("use_identity_as_username true")
        if extra_config:
            lines.append(extra_config)
        self.config = self.workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.workdir / "mosquitto.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.certs else 'mqtt'}://{self.host}:{self.port}"

    def start(self) -> "Mosquitto":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=log, stderr=log)
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

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
