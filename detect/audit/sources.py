"""What an audit reads: the fleet PKI directory, the broker's Mosquitto config (with its
include_dir and acl_file) and the broker's connection log.

Every reader is bounded (file count, file size, log bytes) because each file may have been
planted by someone hostile, and each records where a fact came from (file and line) so a
finding can name it.
"""

import datetime
import glob
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

from garrison.detect.ingest import brokerlog

if TYPE_CHECKING:
    from cryptography import x509

MAX_CERT_FILES = 100000
MAX_CERT_BYTES = 64 * 1024
MAX_CONF_FILES = 256
MAX_CONF_BYTES = 1024 * 1024
MAX_LOG_BYTES = 64 * 1024 * 1024  # the tail of a longer log is read


class SourceError(Exception):
    """A source that cannot be read at all; the message is one line."""


# ------------------------------------------------------------------------------------ PKI


@dataclass
class CertInfo:
    path: Path
    cert: "x509.Certificate"
    certificate_id: str  # lowercase hex SHA-256 of the DER (AWS's certificateId)
    common_name: str
    role: str  # "ca", "device", "server", "engine"
    signed_by_ca: bool = True

    @property
    def serial(self) -> int:
        return self.cert.serial_number


@dataclass
class Pki:
    directory: Path
    ca: Optional[CertInfo]
    certificates: List[CertInfo]  # every leaf: things/*, server, engine
    revoked: Dict[int, datetime.datetime] = field(default_factory=dict)  # serial -> revocation date
    crl_path: Optional[Path] = None
    problems: List[str] = field(default_factory=list)  # unreadable files

    def by_cn(self) -> Dict[str, List[CertInfo]]:
        out: Dict[str, List[CertInfo]] = {}
        for info in self.certificates:
            out.setdefault(info.common_name, []).append(info)
        return out


def certificate_id(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def common_name(cert) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _read_bounded(path: Union[str, Path], limit: int) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def _load_cert(path: Path, role: str, ca_cert=None) -> CertInfo:
    from cryptography import x509

    data = _read_bounded(path, MAX_CERT_BYTES)
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    info = CertInfo(path, cert, certificate_id(cert), common_name(cert), role)
    if ca_cert is not None:
        info.signed_by_ca = _signed_by(cert, ca_cert)
    return info


def _signed_by(cert, ca_cert) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)  # cryptography >= 40: issuer name and signature
        return True
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False


def load_pki(directory) -> Pki:
    """The CA, every certificate in things/ (*.crt, *.pem, including ones the tool did not
    issue), server.crt and engine.crt, and the CRL's revoked serials."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceError(f"PKI directory {directory}: not a directory")
    problems: List[str] = []
    ca = None
    try:
        ca = _load_cert(directory / "ca.crt", "ca")
    except FileNotFoundError:
        problems.append(f"{directory / 'ca.crt'}: missing")
    except (ValueError, OSError) as exc:
        problems.append(f"{directory / 'ca.crt'}: unreadable ({exc})")
    ca_cert = ca.cert if ca else None
    paths: List[Tuple[Path, str]] = []
    things = directory / "things"
    if things.is_dir():
        for name in sorted(os.listdir(things))[:MAX_CERT_FILES]:
            if name.endswith((".crt", ".pem")) and not name.endswith(".key"):
                paths.append((things / name, "device"))
    for name, role in (("server.crt", "server"), ("engine.crt", "engine")):
        if (directory / name).is_file():
            paths.append((directory / name, role))
    certificates = []
    for path, role in paths:
        try:
            certificates.append(_load_cert(path, role, ca_cert))
        except (ValueError, OSError) as exc:
            problems.append(f"{path}: unreadable ({exc})")
    pki = Pki(directory, ca, certificates, problems=problems)
    crl_path = directory / "crl.pem"
    if crl_path.is_file():
        pki.crl_path = crl_path
        try:
            pki.revoked = read_crl(crl_path)
        except (ValueError, OSError) as exc:
            problems.append(f"{crl_path}: unreadable ({exc})")
    return pki


def read_crl(path: Union[str, Path]) -> Dict[int, datetime.datetime]:
    from cryptography import x509

    crl = x509.load_pem_x509_crl(_read_bounded(path, MAX_CONF_BYTES))
    out = {}
    for entry in crl:
        when = getattr(entry, "revocation_date_utc", None) or entry.revocation_date.replace(
            tzinfo=datetime.timezone.utc
        )
        out[entry.serial_number] = when
    return out


# ----------------------------------------------------------------------------- broker config


@dataclass
class Directive:
    key: str
    args: List[str]
    file: str
    line: int

    @property
    def value(self) -> str:
        return " ".join(self.args)


@dataclass
class Listener:
    port: int
    bind: Optional[str]
    where: Directive  # the `listener` line (or the first default-listener line)
    settings: Dict[str, Directive] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.bind or '0.0.0.0'}:{self.port}"

    @property
    def tls(self) -> bool:
        return "certfile" in self.settings or "psk_hint" in self.settings

    @property
    def loopback_only(self) -> bool:
        if not self.bind:
            return False
        try:
            return ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            return self.bind == "localhost"

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        directive = self.settings.get(key)
        return directive.value if directive else default


@dataclass
class AclRule:
    kind: str  # "topic" (under `user`, or for anonymous clients) or "pattern"
    user: Optional[str]  # the `user` block a topic line sits in; None for patterns/anonymous
    access: str  # read | write | readwrite | deny
    topic: str
    file: str
    line: int


@dataclass
class BrokerConfig:
    path: Path
    globals: Dict[str, List[Directive]]  # every directive outside listener scope, in order
    listeners: List[Listener]
    acl_path: Optional[Path] = None
    acl: List[AclRule] = field(default_factory=list)
    per_listener_settings: bool = False

    def last(self, key: str) -> Optional[Directive]:
        values = self.globals.get(key)
        return values[-1] if values else None

    def all(self, key: str) -> List[Directive]:
        return self.globals.get(key, [])


# Settings that belong to the listener they follow (Mosquitto's "listener" scope).
LISTENER_KEYS = {
    "cafile",
    "capath",
    "certfile",
    "keyfile",
    "crlfile",
    "require_certificate",
    "tls_version",
    "use_identity_as_username",
    "use_subject_as_username",
    "use_username_as_clientid",
    "protocol",
    "psk_hint",
    "ciphers",
    "mount_point",
    "http_dir",
    "socket_domain",
    "max_connections",
    "bind_interface",
    "allow_anonymous",
    "password_file",
    "acl_file",
    "psk_file",
}


def _lines(path: Path, budget: List[int]) -> List[Tuple[int, List[str]]]:
    budget[0] -= 1
    if budget[0] < 0:
        raise SourceError(f"more than {MAX_CONF_FILES} config files (include_dir loop?)")
    text = _read_bounded(path, MAX_CONF_BYTES).decode("utf-8", "replace")
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            out.append((number, stripped.split()))
    return out


def load_broker_config(path) -> BrokerConfig:
    """Parse mosquitto.conf, following include_dir (its *.conf in order) and acl_file."""
    path = Path(path)
    try:
        directives = _directives(path, [MAX_CONF_FILES])
    except OSError as exc:
        raise SourceError(f"broker config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SourceError(f"broker config {path}: {exc}") from None
    config = BrokerConfig(path, {}, [])
    default = Listener(1883, None, directives[0] if directives else Directive("", [], str(path), 0))
    explicit_default = False  # `port` / `bind_address`: the default listener on all interfaces
    current: Optional[Listener] = None
    for d in directives:
        if d.key == "listener" and d.args:
            try:
                port = int(d.args[0])
            except ValueError:
                continue
            current = Listener(port, d.args[1] if len(d.args) > 1 else None, d)
            config.listeners.append(current)
        elif d.key in ("port", "bind_address") and d.args:
            if not explicit_default:
                default.where, explicit_default = d, True
            if d.key == "port" and d.args[0].isdigit():
                default.port = int(d.args[0])
            elif d.key == "bind_address":
                default.bind = d.args[0]
        elif d.key in LISTENER_KEYS:
            (current or default).settings[d.key] = d
            config.globals.setdefault(d.key, []).append(d)  # some are global unless per_listener_settings
        else:
            config.globals.setdefault(d.key, []).append(d)
    if explicit_default:
        config.listeners.insert(0, default)
    elif not config.listeners:  # Mosquitto 2 with no listener: "local only mode" on loopback 1883
        default.bind = "127.0.0.1"
        config.listeners.append(default)
    pls = config.last("per_listener_settings")
    config.per_listener_settings = bool(pls and pls.value.lower() == "true")
    acl = config.last("acl_file")
    if acl and acl.args:
        config.acl_path = Path(acl.value)
        if not config.acl_path.is_absolute():
            config.acl_path = path.parent / config.acl_path
        try:
            config.acl = load_acl(config.acl_path)
        except (OSError, ValueError) as exc:
            raise SourceError(f"acl_file {config.acl_path} ({acl.file}:{acl.line}): {exc}") from None
    return config


def _directives(path: Path, budget: List[int]) -> List[Directive]:
    out = []
    for number, words in _lines(path, budget):
        key, args = words[0], words[1:]
        out.append(Directive(key, args, str(path), number))
        if key == "include_dir" and args:
            include = Path(" ".join(args))
            if not include.is_absolute():
                include = path.parent / include
            for name in sorted(glob.glob(str(include / "*.conf"))):
                out.extend(_directives(Path(name), budget))
    return out


def load_acl(path: Path) -> List[AclRule]:
    rules = []
    user: Optional[str] = None
    for number, words in _lines(path, [MAX_CONF_FILES]):
        key = words[0]
        if key == "user" and len(words) > 1:
            user = " ".join(words[1:])
        elif key in ("topic", "pattern") and len(words) > 1:
            if words[1] in ("read", "write", "readwrite", "deny") and len(words) > 2:
                access, topic = words[1], " ".join(words[2:])
            else:
                access, topic = "readwrite", " ".join(words[1:])
            rules.append(AclRule(key, user if key == "topic" else None, access, topic, str(path), number))
    return rules


# ----------------------------------------------------------------------------- broker log

# Parsed by garrison.detect.ingest.brokerlog, the one parser of Mosquitto's log (the engine's
# cloud-side metrics read the same lines).
_KINDS = {brokerlog.CONNECT: "connect", brokerlog.TAKEOVER: "takeover", brokerlog.DISCONNECT: "disconnect"}


@dataclass
class LogEvent:
    time: int
    kind: str  # "connect", "takeover", "disconnect"
    client_id: str
    username: Optional[str] = None
    address: Optional[str] = None
    line: int = 0


def parse_log_lines(lines, first_line: int = 1) -> List[LogEvent]:
    events = []
    for number, raw in enumerate(lines, first_line):
        event = brokerlog.parse_line(raw)
        if event is None or event.time_s is None:
            continue
        kind = _KINDS.get(event.kind)
        if kind is None:
            continue
        address = f"{event.address}:{event.port}" if kind == "connect" else None
        events.append(LogEvent(event.time_s, kind, event.client, event.username, address, number))
    return events


def load_broker_log(path) -> List[LogEvent]:
    """Events from a Mosquitto log file (its last MAX_LOG_BYTES); line numbers are file lines
    when the whole file was read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            skipped = max(0, size - MAX_LOG_BYTES)
            handle.seek(skipped)
            data = handle.read(MAX_LOG_BYTES)
    except OSError as exc:
        raise SourceError(f"broker log {path}: {exc.strerror or exc}") from None
    lines = data.decode("utf-8", "replace").splitlines()
    if skipped:
        lines = lines[1:]  # a partial first line
    return parse_log_lines(lines, 1 if not skipped else 0)
