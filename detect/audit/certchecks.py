"""Certificate checks over the fleet PKI directory: expiry, age, key quality."""

import datetime
from typing import Any, Dict, List, Tuple

from garrison.detect.audit import keyquality
from garrison.detect.audit.checks import CRITICAL, HIGH, LOW, MEDIUM, Check, Context, finding, iso
from garrison.detect.audit.sources import CertInfo


def _not_after(cert) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _not_before(cert) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    return value if value is not None else cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)


def active_device_certs(ctx: Context) -> List[CertInfo]:
    """Leaves signed by the fleet CA and not revoked (AWS audits ACTIVE certificates)."""
    pki = ctx.need_pki()
    return [c for c in pki.certificates if c.signed_by_ca and c.serial not in pki.revoked]


def _resource(info: CertInfo) -> Tuple[str, Dict[str, Any]]:
    if info.role == "ca":
        return "CA_CERTIFICATE", {"caCertificateId": info.certificate_id}
    return "DEVICE_CERTIFICATE", {"deviceCertificateId": info.certificate_id}


def _info(info: CertInfo) -> Dict[str, Any]:
    return {
        "thingName": info.common_name if info.role == "device" else None,
        "commonName": info.common_name,
        "role": info.role,
        "file": str(info.path),
        "notAfter": iso(_not_after(info.cert)),
    }


def _expiring(ctx: Context, certs: List[CertInfo]) -> Tuple[int, List[Dict[str, Any]]]:
    out = []
    soon = ctx.now + datetime.timedelta(days=ctx.settings.expiring_days)
    for info in certs:
        end = _not_after(info.cert)
        kind, ident = _resource(info)
        if end <= ctx.now:
            out.append(
                finding(
                    kind,
                    ident,
                    "CERTIFICATE_PAST_EXPIRATION",
                    f"certificate {info.common_name!r} expired on {iso(end)}",
                    **_info(info),
                )
            )
        elif end <= soon:
            days = (end - ctx.now).days
            out.append(
                finding(
                    kind,
                    ident,
                    "CERTIFICATE_APPROACHING_EXPIRATION",
                    f"certificate {info.common_name!r} expires in {days} days ({iso(end)}); "
                    f"threshold {ctx.settings.expiring_days} days",
                    **_info(info),
                )
            )
    return len(certs), out


def _ca(ctx: Context) -> List[CertInfo]:
    ca = ctx.need_pki().ca
    return [ca] if ca else []


def device_expiring(ctx: Context):
    return _expiring(ctx, active_device_certs(ctx))


def ca_expiring(ctx: Context):
    return _expiring(ctx, _ca(ctx))


_WHY = {
    "RSA_KEY_TOO_SMALL": f"an RSA key under {keyquality.MIN_RSA_BITS} bits",
    "EC_KEY_TOO_SMALL": f"an EC key under {keyquality.MIN_EC_BITS} bits",
    "ROCA_VULNERABLE": "an RSA modulus with the ROCA fingerprint (CVE-2017-15361): its private key "
    "can be computed from the public key",
    "DEBIAN_WEAK_KEY": "a Debian weak key (CVE-2008-0166) listed in the blocklist",
    "UNSUPPORTED_KEY_TYPE": "a key type the fleet does not accept (only RSA, EC, Ed25519, Ed448)",
}


def _key_quality(ctx: Context, certs: List[CertInfo]) -> Tuple[int, List[Dict[str, Any]]]:
    out = []
    for info in certs:
        try:
            public_key = info.cert.public_key()
        except Exception:  # a key cryptography cannot load (SM2, GOST): one must not fail the fleet's check
            public_key, found = None, ["UNSUPPORTED_KEY_TYPE"]
        else:
            found = keyquality.weaknesses(public_key, ctx.settings.debian_blocklist)
        if found:
            kind, ident = _resource(info)
            size = getattr(public_key, "key_size", None)
            out.append(
                finding(
                    kind,
                    ident,
                    "CERTIFICATE_KEY_VULNERABILITY",
                    f"certificate {info.common_name!r} has " + "; and ".join(_WHY[w] for w in found),
                    weaknesses=found,
                    keySize=size,
                    **_info(info),
                )
            )
    return len(certs), out


def device_key_quality(ctx: Context):
    return _key_quality(ctx, active_device_certs(ctx))


def ca_key_quality(ctx: Context):
    return _key_quality(ctx, _ca(ctx))


def device_age(ctx: Context):
    certs = active_device_certs(ctx)
    out = []
    for info in certs:
        age = (ctx.now - _not_before(info.cert)).days
        if age >= ctx.settings.age_days:
            kind, ident = _resource(info)
            out.append(
                finding(
                    kind,
                    ident,
                    "CERTIFICATE_PAST_AGE_THRESHOLD",
                    f"certificate {info.common_name!r} has been valid for {age} days "
                    f"(threshold {ctx.settings.age_days})",
                    ageDays=age,
                    **_info(info),
                )
            )
    return len(certs), out


CHECKS = [
    Check(
        "DEVICE_CERTIFICATE_EXPIRING_CHECK",
        MEDIUM,
        ("pki",),
        device_expiring,
        description="device certificates expired or expiring within the threshold (30 days by default)",
    ),
    Check(
        "CA_CERTIFICATE_EXPIRING_CHECK",
        HIGH,
        ("pki",),
        ca_expiring,
        description="the fleet CA certificate expired or expiring within the threshold",
    ),
    Check(
        "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
        CRITICAL,
        ("pki",),
        device_key_quality,
        description="device keys: RSA < 2048, EC < 256, ROCA, Debian weak keys (with a blocklist)",
    ),
    Check(
        "CA_CERTIFICATE_KEY_QUALITY_CHECK",
        CRITICAL,
        ("pki",),
        ca_key_quality,
        description="the CA key: RSA < 2048, EC < 256, ROCA, Debian weak keys (with a blocklist)",
    ),
    Check(
        "DEVICE_CERTIFICATE_AGE_CHECK",
        LOW,
        ("pki",),
        device_age,
        enabled_by_default=False,
        description="device certificates valid for longer than the age threshold (365 days by default)",
    ),
]
