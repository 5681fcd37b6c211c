"""A fleet for the audit tests: the project's own PKI plus certificates planted with
`cryptography` (as a factory would provision them), raw MQTT-over-TLS clients, and a real
Mosquitto on broker-config's configuration."""
import datetime
import os
import random
from math import isqrt
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures import free_port, wait_for_port  # noqa: E402

from garrison.detect.ops import brokerconf, pki  # noqa: E402

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def fleet(directory: Path, things=("cam-1", "cam-2"), ca_days: int = pki.CA_DAYS) -> pki.FleetCA:
    ca = pki.FleetCA(directory)
    ca.init(ca_days)
    ca.issue_server(["localhost", "127.0.0.1"])
    ca.issue_engine()
    for thing in things:
        ca.issue_thing(thing)
    return ca


def write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def plant(ca: pki.FleetCA, name: str, key=None, not_before: datetime.datetime = None,
          not_after: datetime.datetime = None, public_key=None) -> Path:
    """A device certificate signed by the fleet CA that `pki issue` did not make."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), None)
    key = key if key is not None or public_key is not None else ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(public_key or key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - DAY).not_valid_after(not_after or NOW + 365 * DAY)
            .sign(ca_key, hashes.SHA256()))
    path = ca.dir / "things" / f"{name}.crt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        write_key(ca.dir / "things" / f"{name}.key", key)
    return path


# ---------------------------------------------------------------------------- a ROCA key

def _probably_prime(n: int, rounds: int = 24) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def roca_private_key(bits: int = 2048, seed: int = 15361):
    """An RSA key whose primes have RSALib's structure p = k*M + (65537^a mod M) (the weakness
    ROCA exploits), M the primorial of the primes up to 167, so its modulus has the fingerprint."""
    M = 1
    for p in range(2, 168):
        if all(p % q for q in range(2, p)):
            M *= p
    rng = random.Random(seed)
    half = bits // 2

    def prime() -> int:
        while True:
            # p, q in [sqrt(2) * 2^(half-1), 2^half): n has exactly `bits` bits
            k = rng.randrange(isqrt(2 ** (2 * half - 1)) // M + 1, 2 ** half // M - 1)
            candidate = k * M + pow(65537, rng.getrandbits(64), M)
            if _probably_prime(candidate) and (candidate - 1) % 65537:
                return candidate

    p, q = prime(), prime()
    while q == p:
        q = prime()
    n, e = p * q, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                    rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, n))
    return numbers.private_key()


# ------------------------------------------------------------------------- MQTT over TLS

def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(cid).to_bytes(2, "big") + cid
    length = len(variable) + len(payload)
    assert length < 128
    return bytes([0x10, length]) + variable + payload


def mqtt_connect(port: int, ca: pki.FleetCA, cert: Path, key: Path, client_id: str, timeout: float = 10.0):
    """A raw MQTT 3.1.1 connection over mutual TLS; returns the open socket once CONNACK says
    yes. Raises ssl.SSLError / ConnectionError when the broker refuses."""
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    context.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock = context.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(_connect_packet(client_id))
        ack = sock.recv(4)
    except Exception:
        raw.close()
        raise
    if ack != b"\x20\x02\x00\x00":
        sock.close()
        raise ConnectionError(f"no CONNACK (got {ack!r})")
    return sock


class Broker:
    """A real Mosquitto on `garrison-detect broker-config`'s configuration, logging to a file."""

    def __init__(self, workdir: Path, ca: pki.FleetCA, lock_client_ids: bool = False):
        self.workdir, self.ca = workdir, ca
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        self.conf, self.acl = self.write(lock_client_ids)
        self.proc: Optional[subprocess.Popen] = None

    def write(self, lock_client_ids: bool = False):
        return brokerconf.write(self.workdir / "broker", self.ca.cert_path, self.ca.dir / "server.crt",
                                self.ca.dir / "server.key", port=self.port, bind="127.0.0.1",
                                run_as="root" if os.geteuid() == 0 else None, force=True,
                                lock_client_ids=lock_client_ids, log_file=self.log)

    def start(self) -> "Broker":
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def connect(self, thing: str, client_id: Optional[str] = None, cert: Optional[Path] = None):
        cert_path, key_path = self.ca.thing_paths(thing)
        return mqtt_connect(self.port, self.ca, cert or cert_path, key_path, client_id or thing)
