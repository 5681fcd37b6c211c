"""Certificate checks on a fleet made by the project's PKI plus planted certificates."""
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from garrison.detect.audit import keyquality
from garrison.detect.audit.checks import Settings
from garrison.detect.audit.task import AuditSources, run_audit

from helpers import DAY, NOW, fleet, plant, roca_private_key


def audit(pki_dir, *checks, **settings):
    result = run_audit(AuditSources(pki_dir=str(pki_dir), settings=Settings(**settings)), list(checks))
    return result["task"], result["findings"]


def by_cn(findings):
    return {f["nonCompliantResource"]["additionalInfo"]["commonName"]: f for f in findings}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    ca = fleet(tmp_path_factory.mktemp("pki") / "pki")
    plant(ca, "expired-1", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    plant(ca, "expiring-1", not_after=NOW + 10 * DAY)
    plant(ca, "weak-rsa-1", key=rsa.generate_private_key(65537, 1024))
    plant(ca, "healthy-rsa-1", key=rsa.generate_private_key(65537, 2048))
    plant(ca, "roca-1", key=roca_private_key())
    plant(ca, "weak-ec-1", public_key=ec.generate_private_key(ec.SECP192R1()).public_key())
    plant(ca, "factory-ec-1")     # healthy, provisioned outside `pki issue`
    return ca


HEALTHY = {"cam-1", "cam-2", "healthy-rsa-1", "factory-ec-1", "localhost", "garrison-detect"}


def test_expiring_and_expired_device_certificates_are_found_healthy_ones_are_not(planted):
    task, findings = audit(planted.dir, "DEVICE_CERTIFICATE_EXPIRING_CHECK")
    found = by_cn(findings)
    assert set(found) == {"expired-1", "expiring-1"}
    assert found["expired-1"]["reasonForNonComplianceCode"] == "CERTIFICATE_PAST_EXPIRATION"
    assert found["expiring-1"]["reasonForNonComplianceCode"] == "CERTIFICATE_APPROACHING_EXPIRATION"
    detail = task["auditDetails"]["DEVICE_CERTIFICATE_EXPIRING_CHECK"]
    assert detail["checkRunStatus"] == "COMPLETED_NON_COMPLIANT"
    assert detail["nonCompliantResourcesCount"] == 2 and detail["totalResourcesCount"] == 11
    finding = found["expired-1"]
    assert finding["severity"] == "MEDIUM" and finding["isSuppressed"] is False
    resource = finding["nonCompliantResource"]
    assert resource["resourceType"] == "DEVICE_CERTIFICATE"
    from garrison.detect.audit.sources import certificate_id
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((planted.dir / "things" / "expired-1.crt").read_bytes())
    assert resource["resourceIdentifier"] == {"deviceCertificateId": certificate_id(cert)}
    assert len(certificate_id(cert)) == 64 and certificate_id(cert) == certificate_id(cert).lower()
    assert resource["additionalInfo"]["thingName"] == "expired-1"
    # a 5-day threshold: the 10-day certificate is fine
    _, findings = audit(planted.dir, "DEVICE_CERTIFICATE_EXPIRING_CHECK", expiring_days=5)
    assert set(by_cn(findings)) == {"expired-1"}


def test_weak_keys_rsa_1024_ec_192_and_roca_are_found_healthy_keys_are_not(planted):
    task, findings = audit(planted.dir, "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK")
    found = by_cn(findings)
    assert set(found) == {"weak-rsa-1", "roca-1", "weak-ec-1"}
    assert found["weak-rsa-1"]["nonCompliantResource"]["additionalInfo"]["weaknesses"] == ["RSA_KEY_TOO_SMALL"]
    assert found["roca-1"]["nonCompliantResource"]["additionalInfo"]["weaknesses"] == ["ROCA_VULNERABLE"]
    assert found["weak-ec-1"]["nonCompliantResource"]["additionalInfo"]["weaknesses"] == ["EC_KEY_TOO_SMALL"]
    assert all(f["severity"] == "CRITICAL" and f["reasonForNonComplianceCode"] == "CERTIFICATE_KEY_VULNERABILITY"
               for f in findings)
    assert not HEALTHY & set(found)


def test_a_key_the_library_cannot_load_is_a_finding_not_a_failed_check(tmp_path):
    """A fleet-signed certificate with an SM2 key (openssl makes one; cryptography cannot load
    it) failed the whole check before, so the fleet's RSA-1024 device went unreported."""
    import subprocess

    ca = fleet(tmp_path / "pki")
    plant(ca, "weak-rsa-2", key=rsa.generate_private_key(65537, 1024))
    key, csr, crt = tmp_path / "sm2.key", tmp_path / "sm2.csr", ca.dir / "things" / "sm2-1.crt"
    for argv in (["openssl", "genpkey", "-algorithm", "SM2", "-out", key],
                 ["openssl", "req", "-new", "-key", key, "-subj", "/CN=sm2-1", "-out", csr],
                 ["openssl", "x509", "-req", "-in", csr, "-CA", ca.cert_path, "-CAkey", ca.key_path,
                  "-set_serial", "7", "-days", "30", "-out", crt]):
        subprocess.run(argv, check=True, capture_output=True)
    task, findings = audit(ca.dir, "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK")
    detail = task["auditDetails"]["DEVICE_CERTIFICATE_KEY_QUALITY_CHECK"]
    assert detail["checkRunStatus"] == "COMPLETED_NON_COMPLIANT", detail
    found = by_cn(findings)
    assert set(found) == {"weak-rsa-2", "sm2-1"}
    info = found["sm2-1"]["nonCompliantResource"]["additionalInfo"]
    assert info["weaknesses"] == ["UNSUPPORTED_KEY_TYPE"] and info.get("keySize") is None


def test_roca_fingerprint_detector():
    key = roca_private_key(seed=7)
    assert key.key_size == 2048 and keyquality.roca_vulnerable(key.public_key().public_numbers().n)
    for _ in range(3):  # ordinary keys never carry the fingerprint
        assert not keyquality.roca_vulnerable(rsa.generate_private_key(65537, 2048).public_key().public_numbers().n)


def test_debian_weak_keys_only_with_a_blocklist(planted, tmp_path):
    victim = rsa.generate_private_key(65537, 2048)
    plant(planted, "debian-1", key=victim)
    try:
        _, findings = audit(planted.dir, "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK")
        assert "debian-1" not in by_cn(findings)   # no blocklist: no claim
        blocklist = tmp_path / "blacklist.RSA-2048"
        blocklist.write_text("# openssl-blacklist\n" + keyquality.debian_fingerprint(
            victim.public_key().public_numbers().n) + "\n0123456789abcdef0123\n")
        _, findings = audit(planted.dir, "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK", debian_blocklist=blocklist)
        found = by_cn(findings)
        assert found["debian-1"]["nonCompliantResource"]["additionalInfo"]["weaknesses"] == ["DEBIAN_WEAK_KEY"]
        assert "healthy-rsa-1" not in found
    finally:
        (planted.dir / "things" / "debian-1.crt").unlink()
        (planted.dir / "things" / "debian-1.key").unlink()


def test_age_check_is_off_by_default_and_fires_past_its_threshold(planted):
    task = run_audit(AuditSources(pki_dir=str(planted.dir)))["task"]
    assert "DEVICE_CERTIFICATE_AGE_CHECK" not in task["auditDetails"]
    _, findings = audit(planted.dir, "DEVICE_CERTIFICATE_AGE_CHECK", age_days=300)
    assert set(by_cn(findings)) == {"expired-1"}    # valid since 400 days
    assert findings[0]["reasonForNonComplianceCode"] == "CERTIFICATE_PAST_AGE_THRESHOLD"
    _, findings = audit(planted.dir, "DEVICE_CERTIFICATE_AGE_CHECK", age_days=365 * 2)
    assert findings == []


def test_ca_certificate_expiring_and_key_quality(tmp_path):
    healthy = fleet(tmp_path / "healthy", things=())
    task, findings = audit(healthy.dir, "CA_CERTIFICATE_EXPIRING_CHECK", "CA_CERTIFICATE_KEY_QUALITY_CHECK")
    assert findings == [] and all(d["checkRunStatus"] == "COMPLETED_COMPLIANT" for d in task["auditDetails"].values())
    short = fleet(tmp_path / "short", things=(), ca_days=20)
    _, findings = audit(short.dir, "CA_CERTIFICATE_EXPIRING_CHECK")
    assert [f["reasonForNonComplianceCode"] for f in findings] == ["CERTIFICATE_APPROACHING_EXPIRATION"]
    assert findings[0]["nonCompliantResource"]["resourceType"] == "CA_CERTIFICATE"
    assert findings[0]["severity"] == "HIGH"
    # a CA with an RSA 1024 key (self-signed, as an old factory CA might be)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(65537, 1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old factory CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - DAY).not_valid_after(NOW + 900 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _, findings = audit(tmp_path / "old", "CA_CERTIFICATE_KEY_QUALITY_CHECK")
    assert [f["nonCompliantResource"]["additionalInfo"]["weaknesses"] for f in findings] == [["RSA_KEY_TOO_SMALL"]]
    assert findings[0]["nonCompliantResource"]["resourceIdentifier"]["caCertificateId"]


def test_a_certificate_not_signed_by_the_fleet_ca_is_not_audited(planted, tmp_path):
    other = fleet(tmp_path / "other", things=())
    stranger = plant(other, "stranger-1", not_after=NOW + DAY)   # expiring, but not ours
    target = planted.dir / "things" / "stranger-1.crt"
    target.write_bytes(stranger.read_bytes())
    try:
        _, findings = audit(planted.dir, "DEVICE_CERTIFICATE_EXPIRING_CHECK")
        assert "stranger-1" not in by_cn(findings)
    finally:
        target.unlink()
