"""A real Mosquitto on broker-config's configuration writes a real log: two clients share a
certificate, two share a client id; a revoked device is refused once the broker has the CRL."""
import os
import signal
import ssl

import pytest

from garrison.detect.audit.task import AuditSources, run_audit

from helpers import Broker, fleet
from fixtures import wait_for

CONN = ("DEVICE_CERTIFICATE_SHARED_CHECK", "CONFLICTING_CLIENT_IDS_CHECK")


def audit(broker, *checks, pki=True):
    src = AuditSources(pki_dir=str(broker.ca.dir) if pki else None, broker_config=str(broker.conf),
                       broker_log=str(broker.log))
    result = run_audit(src, list(checks))
    return result["task"], result["findings"]


def log_has(broker, text):
    return broker.log.exists() and text in broker.log.read_text()


@pytest.fixture
def broker(tmp_path):
    ca = fleet(tmp_path / "pki", things=("cam-1", "cam-2", "cam-3", "cam-4"))
    broker = Broker(tmp_path, ca).start()
    yield broker
    broker.stop()


def test_shared_certificate_and_conflicting_client_ids_from_the_log(broker):
    # cam-1's certificate in two concurrent connections with different client ids
    a = broker.connect("cam-1", client_id="cam-1")
    b = broker.connect("cam-1", client_id="cam-1-clone")
    # cam-2 and cam-3 use one client id and keep kicking each other off
    held = []
    for thing in ("cam-2", "cam-3", "cam-2", "cam-3"):
        held.append(broker.connect(thing, client_id="pump-7"))
    broker.connect("cam-4").close()   # an honest device: one connection, its own id
    wait_for(lambda: log_has(broker, "Client pump-7 already connected") and
             broker.log.read_text().count("already connected") >= 3, what="the takeovers in the log")
    task, findings = audit(broker, *CONN)
    shared = [f for f in findings if f["checkName"] == "DEVICE_CERTIFICATE_SHARED_CHECK"]
    assert len(shared) == 1
    info = shared[0]["nonCompliantResource"]["additionalInfo"]
    assert info["thingName"] == "cam-1" and info["clientIds"] == ["cam-1", "cam-1-clone"]
    from garrison.detect.audit.sources import load_pki
    cert = [c for c in load_pki(broker.ca.dir).certificates if c.common_name == "cam-1"][0]
    assert shared[0]["nonCompliantResource"]["resourceIdentifier"] == {"deviceCertificateId": cert.certificate_id}
    conflicts = [f for f in findings if f["checkName"] == "CONFLICTING_CLIENT_IDS_CHECK"]
    assert [f["nonCompliantResource"]["resourceIdentifier"] for f in conflicts] == [{"clientId": "pump-7"}]
    assert conflicts[0]["nonCompliantResource"]["additionalInfo"]["usernames"] == ["cam-2", "cam-3"]
    assert conflicts[0]["nonCompliantResource"]["additionalInfo"]["takeovers"] == 3
    assert task["auditDetails"]["CONFLICTING_CLIENT_IDS_CHECK"]["totalResourcesCount"] == 4  # cam-1, clone, pump-7, cam-4
    for sock in [a, b] + held:
        sock.close()


def test_honest_devices_leave_the_connection_checks_quiet(broker):
    for thing in ("cam-1", "cam-2", "cam-3"):
        broker.connect(thing).close()
    again = broker.connect("cam-1")   # a reconnect after a clean close is no conflict
    wait_for(lambda: broker.log.read_text().count("New client connected") >= 4, what="four connections logged")
    task, findings = audit(broker, *CONN)
    assert findings == []
    assert {d["checkRunStatus"] for d in task["auditDetails"].values()} == {"COMPLETED_COMPLIANT"}
    again.close()


def test_broker_config_output_passes_the_broker_checks(broker):
    task, findings = audit(broker, "LOGGING_DISABLED_CHECK", "BROKER_ANONYMOUS_ACCESS_CHECK",
                           "BROKER_PLAINTEXT_LISTENER_CHECK", "IOT_POLICY_OVERLY_PERMISSIVE_CHECK")
    assert findings == []
    # 13 ACL rules, the two of the control topic (device reads its own, the engine writes them all) and
    # the engine's metrics export (garrison/metrics/#)
    assert task["auditDetails"]["IOT_POLICY_OVERLY_PERMISSIVE_CHECK"]["totalResourcesCount"] == 16


def test_a_revoked_device_is_refused_once_the_broker_has_the_crl(broker):
    broker.connect("cam-1").close()          # before: accepted
    broker.ca.revoke("cam-1", "key_compromise")
    # the CRL exists but the broker's config has no crlfile: the audit says so
    _, findings = audit(broker, "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK")
    assert len(findings) == 1 and "no crlfile" in findings[0]["reasonForNonCompliance"]
    assert findings[0]["reasonForNonComplianceCode"] == "CERTIFICATE_REVOKED_BY_ISSUER"
    # it still gets in, and the log shows it connecting after its revocation
    broker.connect("cam-1").close()
    wait_for(lambda: broker.log.read_text().count("as cam-1 ") >= 2, what="the second connection logged")
    _, findings = audit(broker, "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK")
    assert "times after its revocation" in findings[0]["reasonForNonCompliance"]  # (log times are whole seconds)
    # broker-config again: it writes crlfile now that crl.pem exists; restart the broker
    broker.stop()
    broker.log.unlink()
    broker.write()
    copy = (broker.conf.parent / "crl.pem").resolve()   # copied next to the config, like the TLS files
    assert f"crlfile {copy}" in broker.conf.read_text() and copy.read_bytes() == broker.ca.crl_path.read_bytes()
    broker.start()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        broker.connect("cam-1").close()
    broker.connect("cam-2").close()          # the others still get in
    _, findings = audit(broker, "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK")
    assert findings == []


def test_pki_revoke_cli_and_sighup_reloads_the_crl(broker):
    import subprocess
    import sys
    broker.ca.revoke("cam-3")                 # a CRL exists from the start, so crlfile is configured
    broker.stop()
    broker.write()
    broker.start()
    broker.connect("cam-2").close()
    result = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "pki", "revoke", "--dir", str(broker.ca.dir),
                             "--thing", "cam-2", "--reason", "superseded"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # the broker's copy of the CRL is stale until broker-config runs again: the audit says so
    _, findings = audit(broker, "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK")
    assert [f["nonCompliantResource"]["additionalInfo"]["thingName"] for f in findings] == ["cam-2"]
    assert "does not list it" in findings[0]["reasonForNonCompliance"]
    broker.write()
    os.kill(broker.proc.pid, signal.SIGHUP)
    wait_for(lambda: log_has(broker, "Reloading config"), what="the reload")

    def refused():
        try:
            broker.connect("cam-2").close()
            return False
        except (ssl.SSLError, ConnectionError, OSError):
            return True
    wait_for(refused, timeout=10, what="cam-2 refused after SIGHUP")
    result = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "pki", "revoke", "--dir", str(broker.ca.dir),
                             "--thing", "cam-2", "--reason", "no-such-reason"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
