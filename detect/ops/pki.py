"""A small fleet PKI: one CA, a certificate per device, the broker's and the engine's certificates.

    garrison-detect pki init   --dir DIR                      # fleet CA: DIR/ca.crt, DIR/ca.key
    garrison-detect pki issue  --dir DIR --thing NAME         # DIR/things/NAME.crt, .key
    garrison-detect pki server --dir DIR --host broker.example.net --host 10.0.0.5
    garrison-detect pki engine --dir DIR [--name garrison-detect]
    garrison-detect pki revoke --dir DIR --thing NAME [--reason key_compromise]   # DIR/crl.pem

A device's identity is its certificate's common name, which is its thing name: the broker
(garrison.detect.ops.brokerconf) takes the CN as the MQTT user name and lets each device publish only its
own reports. Keys are EC P-256, created with mode 0600 (never readable by others, not even for a
moment) and never overwritten. The engine's identity is recorded in DIR/engine.name, and every
name ever issued in DIR/issued-names (garrison.detect.ops.pki_names), so that no device can be issued a
certificate carrying the engine's name (the default one included) or a name issued before.
The directory is kept at mode 0700 whatever mode it had.
"""

import argparse
import datetime
import ipaddress
import os
import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from garrison.agent.statefile import atomic_write
from garrison.detect.ops import pki_names
from garrison.wire import names

PROG = "garrison-detect pki"
NAME_RULE = names.SHAPE  # thing names (garrison.wire.names.THING)
_HOST = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
DEFAULT_ENGINE_IDENTITY = "garrison-detect"
CA_DAYS, LEAF_DAYS = 3650, 825


class PkiError(Exception):
    """Something the operator must fix; the message is one line."""


def valid_name(name: str) -> bool:
    """Thing names as AWS IoT allows them (and free of MQTT wildcards and '/')."""
    return names.valid_thing_name(name)


# ------------------------------------------------------------------------------------ files


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start; refuse to replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # umask may have narrowed it further, never widened; make it exact


def _private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700 even if it existed with a wider mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise PkiError(f"{path} is not a directory")
    os.chmod(path, 0o700)


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise PkiError(f"{path} already exists; refusing to overwrite it")


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _save(cert, key, cert_path: Path, key_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    _refuse_existing(cert_path, key_path)
    _write_new(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


class FleetCA:
    """The CA in `directory` (ca.crt, ca.key) and the certificates it issues there."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.cert_path, self.key_path = self.dir / "ca.crt", self.dir / "ca.key"

    @property
    def engine_name_path(self) -> Path:
        return self.dir / "engine.name"

    def thing_paths(self, thing: str) -> Tuple[Path, Path]:
        return self.dir / "things" / f"{thing}.crt", self.dir / "things" / f"{thing}.key"

    # -- creating the CA ---------------------------------------------------------------------

    def init(self, days: int = CA_DAYS, name: str = "Garrison fleet CA") -> Path:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        _refuse_existing(self.cert_path, self.key_path)
        _private_dir(self.dir)
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _save(cert, key, self.cert_path, self.key_path)
        return self.cert_path

    # -- issuing -----------------------------------------------------------------------------

    def _load(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        except FileNotFoundError:
            raise PkiError(f"no fleet CA in {self.dir} (run `{PROG} init --dir {self.dir}` first)") from None
        except (ValueError, TypeError) as exc:
            raise PkiError(f"cannot read the fleet CA in {self.dir}: {exc}") from None
        return cert, key

    def _issue(
        self, cn: str, days: int, cert_path: Path, key_path: Path, server_hosts: Sequence[str] = (), kind: str = "thing"
    ) -> Path:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID

        ca_cert, ca_key = self._load()
        _refuse_existing(cert_path, key_path)
        _private_dir(self.dir)
        try:  # recorded before the certificate exists: a name is never free again
            pki_names.claim(self.dir, kind, cn, DEFAULT_ENGINE_IDENTITY)
        except pki_names.NameTaken as exc:
            raise PkiError(str(exc)) from None
        key = _new_key()
        now = _now()
        not_after = min(now + datetime.timedelta(days=days), _not_after(ca_cert))  # never outlive the CA
        builder = (
            x509.CertificateBuilder()
            .subject_name(_common_name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server_hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in server_hosts]), critical=False
            )
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        _private_dir(cert_path.parent)
        _save(builder.sign(ca_key, hashes.SHA256()), key, cert_path, key_path)
        return cert_path

    def engine_identity(self) -> str:
        return pki_names.recorded_engine_identity(self.dir) or DEFAULT_ENGINE_IDENTITY

    def issue_thing(self, thing: str, days: int = LEAF_DAYS) -> Tuple[Path, Path]:
        """A device certificate whose CN is the thing name."""
        _check_name(thing, "thing name")
        cert_path, key_path = self.thing_paths(thing)
        self._issue(thing, days, cert_path, key_path)
        return cert_path, key_path

    def issue_server(self, hosts: Sequence[str], days: int = LEAF_DAYS) -> Tuple[Path, Path]:
        """The broker's certificate, valid for each of `hosts` (DNS names or IP addresses)."""
        if not hosts:
            raise PkiError("give the broker's name or address with --host (repeat for several)")
        for host in hosts:
            _san(host)  # validates
        cert_path, key_path = self.dir / "server.crt", self.dir / "server.key"
        self._issue(hosts[0], days, cert_path, key_path, server_hosts=hosts, kind="server")
        return cert_path, key_path

    def issue_engine(self, name: str = DEFAULT_ENGINE_IDENTITY, days: int = LEAF_DAYS) -> Tuple[Path, Path]:
        """The engine's client certificate; its CN is the engine's MQTT identity."""
        _check_name(name, "engine identity")
        cert_path, key_path = self.dir / "engine.crt", self.dir / "engine.key"
        self._issue(name, days, cert_path, key_path, kind="engine")
        self.engine_name_path.write_text(name + "\n")
        return cert_path, key_path

    # -- revoking (DIR/crl.pem; broker-config points Mosquitto's crlfile at it) ------------------

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def revoke(self, thing: str, reason: str = "unspecified") -> Path:
        """Add the thing's certificate to DIR/crl.pem (signed by the CA); returns the CRL's path."""
        _check_name(thing, "thing name")
        return self.revoke_certificate(self.thing_paths(thing)[0], reason)

    def revoke_certificate(self, cert_path: Path, reason: str = "unspecified") -> Path:
        """Revoke any certificate the CA issued (also ones it did not write, e.g. factory-provisioned)."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        except FileNotFoundError:
            raise PkiError(f"no certificate {cert_path}") from None
        except ValueError as exc:
            raise PkiError(f"cannot read {cert_path}: {exc}") from None
        return self.revoke_serials([cert.serial_number], reason, issuer=cert.issuer)

    def revoke_serials(self, serials: Sequence[int], reason: str = "unspecified", issuer=None) -> Path:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        try:
            flag = x509.ReasonFlags[reason.replace("-", "_")]
        except KeyError:
            raise PkiError(
                f"unknown revocation reason {reason!r} (use one of {', '.join(r.name for r in x509.ReasonFlags)})"
            ) from None
        ca_cert, ca_key = self._load()
        if issuer is not None and issuer != ca_cert.subject:
            raise PkiError("that certificate was not issued by this fleet CA")
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now)
            # an expired CRL makes OpenSSL refuse every client: it lasts as long as the CA
            .next_update(max(_not_after(ca_cert), now + datetime.timedelta(days=1)))
        )
        known = set()
        if self.crl_path.exists():
            for entry in x509.load_pem_x509_crl(self.crl_path.read_bytes()):
                known.add(entry.serial_number)
                builder = builder.add_revoked_certificate(entry)
        for serial in serials:
            if serial in known:
                continue
            revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            if flag is not x509.ReasonFlags.unspecified:
                revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        crl = builder.sign(ca_key, hashes.SHA256())
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        os.chmod(self.crl_path, 0o644)  # the broker reads it
        return self.crl_path


def _check_name(name: str, what: str) -> None:
    if not valid_name(name):
        raise PkiError(f"{what} {name!r} is invalid: use {NAME_RULE}")


def _common_name(cn: str):
    """x509 Name with CN=cn. RFC 5280 bounds a CN at 64 characters but AWS thing names go to 128;
    OpenSSL and Mosquitto take longer ones (tests/reliability check a 128-character thing), so
    past 64 the bound is not applied."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if len(cn) <= 64:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    with warnings.catch_warnings():  # cryptography warns about exactly this
        warnings.simplefilter("ignore", UserWarning)
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)])


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOST.fullmatch(host or ""):
        raise PkiError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _not_before(cert) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)  # cryptography >= 42
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


# -------------------------------------------------------------------------------------- CLI


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not 1 <= value <= 36500:
        raise argparse.ArgumentTypeError(f"days must be 1-36500, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pki init | issue | server | engine` (all take --dir)."""
    actions = parser.add_subparsers(dest="pki_action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    def action(name: str, help_text: str, days: int) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--dir", required=True, help="the fleet PKI directory (holds ca.key: keep it offline)")
        sub.add_argument("--days", type=_days, default=days, help=f"validity in days (default {days})")
        return sub

    action("init", "Create the fleet CA (EC P-256) in DIR: ca.crt, ca.key (mode 0600).", CA_DAYS)
    sub = action(
        "issue",
        "Issue a device certificate (CN = thing name) into DIR/things/. Refuses a name "
        f"issued before (recorded in DIR/{pki_names.INDEX_NAME}, even if its files were deleted) "
        f"and the engine's names ({DEFAULT_ENGINE_IDENTITY} is always reserved).",
        LEAF_DAYS,
    )
    sub.add_argument("--thing", required=True, help=f"the thing name: {NAME_RULE}")
    sub = action("server", "Issue the broker's server certificate: DIR/server.crt, server.key.", LEAF_DAYS)
    sub.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="NAME_OR_IP",
        help="a DNS name or IP address devices use to reach the broker (repeatable)",
    )
    sub = action(
        "engine",
        "Issue the detect engine's client certificate: DIR/engine.crt, engine.key; the name "
        "is recorded in DIR/engine.name, which broker-config reads.",
        LEAF_DAYS,
    )
    sub.add_argument(
        "--name",
        default=DEFAULT_ENGINE_IDENTITY,
        help=f"the engine's MQTT identity, distinct from every thing (default {DEFAULT_ENGINE_IDENTITY})",
    )
    sub = actions.add_parser(
        "revoke",
        help="Revoke a thing's certificate: add it to DIR/crl.pem.",
        description="Revoke a thing's certificate: add it to DIR/crl.pem, signed by the fleet "
        "CA. Run broker-config again (it writes crlfile when crl.pem exists) and reload "
        "the broker (SIGHUP) so it refuses the certificate.",
    )
    sub.add_argument("--dir", required=True, help="the fleet PKI directory")
    sub.add_argument("--thing", required=True, help="the thing whose certificate (DIR/things/NAME.crt) is revoked")
    sub.add_argument(
        "--reason",
        default="unspecified",
        help="key_compromise, superseded, cessation_of_operation, ... (default unspecified)",
    )


def run(args) -> int:
    ca = FleetCA(Path(args.dir))
    try:
        if args.pki_action == "init":
            ca.init(args.days)
            print(
                f"created the fleet CA: {ca.cert_path} (give it to devices and the broker), "
                f"{ca.key_path} (mode 0600; keep it offline)"
            )
        elif args.pki_action == "issue":
            cert, key = ca.issue_thing(args.thing, args.days)
            print(f"issued {cert} and {key} (mode 0600) for thing {args.thing}")
        elif args.pki_action == "server":
            cert, key = ca.issue_server(args.host, args.days)
            print(f"issued {cert} and {key} (mode 0600) for {', '.join(args.host)}")
        elif args.pki_action == "revoke":
            crl = ca.revoke(args.thing, args.reason)
            print(f"revoked the certificate of thing {args.thing} in {crl}; reload the broker (SIGHUP) to enforce it")
        elif args.pki_action == "engine":
            cert, key = ca.issue_engine(args.name, args.days)
            print(f"issued {cert} and {key} (mode 0600) for the engine identity {args.name}")
        return 0
    except PkiError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"{PROG}: {exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="The fleet's certificates: CA, devices, broker, engine.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
