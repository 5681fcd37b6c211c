"""The durable half of `disable`: revoke the thing's certificate so the broker refuses its TLS handshake.

Mosquitto 2.0 skips the dynamic security plugin's login check for a client whose user name is
its certificate's CN (`use_identity_as_username`), so `disableClient` drops a device but cannot
refuse its reconnection (it then has no rights). Where the engine knows the fleet PKI and the
broker's configuration (the engine config's `[audit]` table: `pki_dir`, `broker_config`, and
`broker_pid_file` because Mosquitto in the foreground writes no pid file), `disable` also:

  1. revokes the thing's certificate (DIR/things/THING.crt) into DIR/crl.pem, signed with the
     fleet CA's key (so the engine must be able to read DIR/ca.key);
  2. copies the CRL next to the broker-config generated mosquitto.conf (garrison.detect.ops.brokerfiles);
  3. sends the broker SIGHUP, which makes Mosquitto re-read a changed CRL;

and only then asks the plugin to drop the connection (the runner's order). Mosquitto 2.0 blocks
signals while it waits for sockets and reloads at the end of a loop pass: the signal is pending
before our command arrives, so the reload happens at the latest at the end of the pass that
drops the device, before the pass that could accept its reconnection, which meets the new CRL.
(Revoking after the drop would let the device reconnect before the reload and stay connected.)
Each step is a clause of the action's log entry. A revoked certificate is never un-revoked: `enable` gives
back the broker rights, and the device needs a new certificate under a new thing name
(`pki issue` never issues a name twice, garrison.detect.ops.pki_names).
"""

from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from garrison.detect.ops import brokerfiles

NOT_DURABLE = (
    "not durable: the engine config's [audit] table names no pki_dir and broker_config, so its "
    "certificate is not revoked and its reconnect is not refused (Mosquitto 2.0 lets it connect, "
    "with no rights)"
)


class Revocation:
    """Revokes things' certificates in the PKI at `pki_dir` and makes the broker configured by
    `broker_config` (a broker-config generated mosquitto.conf) refuse them."""

    def __init__(self, pki_dir: str, broker_config: str, broker_pid_file: Optional[str] = None):
        from garrison.detect.ops.pki import FleetCA

        self.ca = FleetCA(Path(pki_dir))
        self.broker_config = Path(broker_config)
        self.broker_pid_file = broker_pid_file

    @classmethod
    def from_config(cls, audit: Optional[Mapping[str, Any]]) -> Optional["Revocation"]:
        """From the engine config's [audit] table; None when it lacks the PKI or the broker config."""
        audit = audit or {}
        if not audit.get("pki_dir") or not audit.get("broker_config"):
            return None
        return cls(audit["pki_dir"], audit["broker_config"], audit.get("broker_pid_file"))

    def certificate(self, thing: str) -> Path:
        return self.ca.thing_paths(thing)[0]

    def is_revoked(self, thing: str) -> bool:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.certificate(thing).read_bytes())
            crl = x509.load_pem_x509_crl(self.ca.crl_path.read_bytes())
        except (OSError, ValueError):
            return False
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    def revoke(self, thing: str, now_ms: int) -> Tuple[bool, List[str]]:
        """(refused: the broker will refuse the certificate from now on, steps: one clause each)."""
        from garrison.detect.ops.pki import PkiError

        cert = self.certificate(thing)
        steps: List[str] = []
        try:
            already = self.is_revoked(thing)
            self.ca.revoke_certificate(cert, "unspecified")
        except (PkiError, OSError) as exc:
            return False, [f"could not revoke its certificate: {exc}; its reconnect is not refused"]
        steps.append(f"certificate {cert} {'was already revoked' if already else 'revoked'} in {self.ca.crl_path}")
        try:
            added = brokerfiles.install_crl(self.broker_config, self.ca.crl_path, now_ms)
        except OSError as exc:
            return False, steps + [
                f"could not copy the CRL next to {self.broker_config}: "
                f"{exc.strerror or exc}; its reconnect is not refused"
            ]
        if added is None:
            return False, steps + [
                f"{self.broker_config} was not written by broker-config: point its crlfile at a "
                "copy of the CRL and reload the broker; until then its reconnect is not refused"
            ]
        if added:
            return False, steps + [
                f"added crlfile to {self.broker_config}: Mosquitto reads a new crlfile only "
                "when it starts, so restart the broker; until then its reconnect is not refused"
            ]
        pid = brokerfiles.broker_pid(str(self.broker_config), pid_file=self.broker_pid_file)
        reloaded = brokerfiles.reload(pid).lstrip("; ")
        steps.append(f"refreshed the broker's copy of the CRL; {reloaded}")
        if pid is None or not reloaded.startswith("sent SIGHUP"):
            steps.append("its reconnect is refused only once the broker reloads")
            return False, steps
        return True, steps

    def enable_note(self, thing: str) -> str:
        """What `enable` says about the certificate."""
        if not self.is_revoked(thing):
            return ""
        return (
            f"; its certificate {self.certificate(thing)} stays revoked (a revoked certificate is never "
            "reinstated), so the broker still refuses it: issue the device a new certificate under a new thing "
            "name (`garrison-detect pki issue` refuses a name issued before)"
        )
