"""Connection checks over the broker's log: shared certificates, conflicting client ids,
revoked certificates still in use."""

from typing import Any, Dict, Optional, Set

from garrison.detect.audit.certchecks import _info
from garrison.detect.audit.checks import CRITICAL, HIGH, MEDIUM, Check, Context, finding, iso
from garrison.detect.audit.sources import BrokerConfig, CertInfo


def _cert_for(ctx: Context, cn: str) -> Optional[CertInfo]:
    """The fleet certificate whose CN is `cn` (the broker's user name under use_identity_as_username)."""
    if ctx.pki is None:
        return None
    matches = [c for c in ctx.pki.certificates if c.common_name == cn and c.signed_by_ca]
    live = [c for c in matches if c.serial not in ctx.pki.revoked]
    found = live or matches
    return found[0] if found else None


def shared_certificate(ctx: Context):
    """One certificate (user name = its CN) in concurrent connections with different client ids."""
    open_by_cid: Dict[str, str] = {}  # client id -> user of its open connection
    open_by_user: Dict[str, Set[str]] = {}
    shared: Dict[str, Dict[str, Any]] = {}
    users: Set[str] = set()
    for event in ctx.need_log():
        if event.kind == "connect":
            if not event.username:
                continue
            users.add(event.username)
            old = open_by_cid.get(event.client_id)
            if old is not None:
                open_by_user.get(old, set()).discard(event.client_id)
            open_by_cid[event.client_id] = event.username
            sessions = open_by_user.setdefault(event.username, set())
            sessions.add(event.client_id)
            if len(sessions) > 1:
                seen = shared.setdefault(event.username, {"clientIds": set(), "lines": []})
                seen["clientIds"].update(sessions)
                seen["lines"].append(event.line)
                seen.setdefault("firstSeen", event.time)
        elif event.kind == "disconnect":
            user = open_by_cid.pop(event.client_id, None)
            if user is not None:
                open_by_user.get(user, set()).discard(event.client_id)
    out = []
    for user, seen in sorted(shared.items()):
        cert = _cert_for(ctx, user)
        ident = {"deviceCertificateId": cert.certificate_id if cert else f"cn:{user}"}
        extra = _info(cert) if cert else {"commonName": user}
        out.append(
            finding(
                "DEVICE_CERTIFICATE",
                ident,
                "CERTIFICATE_SHARED_BY_MULTIPLE_DEVICES",
                f"the certificate of {user!r} was used by {len(seen['clientIds'])} concurrent connections "
                f"with different client ids",
                clientIds=sorted(seen["clientIds"]),
                logFile=ctx.log_path,
                logLines=seen["lines"][:10],
                **extra,
            )
        )
    return len(users), out


def conflicting_client_ids(ctx: Context):
    """One client id from several connections that kick each other off."""
    seen: Dict[str, Dict[str, Any]] = {}
    for event in ctx.need_log():
        if event.kind == "connect":
            entry = seen.setdefault(event.client_id, {"takeovers": 0, "users": set(), "addresses": set(), "lines": []})
            if event.username:
                entry["users"].add(event.username)
            entry["addresses"].add(event.address.rsplit(":", 1)[0] if event.address else "")
        elif event.kind == "takeover":
            entry = seen.setdefault(event.client_id, {"takeovers": 0, "users": set(), "addresses": set(), "lines": []})
            entry["takeovers"] += 1
            entry["lines"].append(event.line)
    out = []
    for cid, entry in sorted(seen.items()):
        if entry["takeovers"] >= ctx.settings.min_takeovers or (entry["takeovers"] and len(entry["users"]) > 1):
            out.append(
                finding(
                    "CLIENT_ID",
                    {"clientId": cid},
                    "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS",
                    f"client id {cid!r} was taken over {entry['takeovers']} times: several connections "
                    f"use it and disconnect each other",
                    takeovers=entry["takeovers"],
                    usernames=sorted(entry["users"]),
                    sourceAddresses=sorted(entry["addresses"]),
                    logFile=ctx.log_path,
                    logLines=entry["lines"][:10],
                )
            )
    return len(seen), out


def _crl_enforced(broker: BrokerConfig, serial: int) -> Optional[str]:
    """None when every TLS listener checks a CRL that lists `serial`; else why not."""
    from garrison.detect.audit.sources import read_crl

    tls = [listener for listener in broker.listeners if listener.tls]
    if not tls:
        return "the broker has no TLS listener"
    for listener in tls:
        crlfile = listener.get("crlfile")
        if not crlfile:
            return f"listener {listener.address} has no crlfile"
        try:
            if serial not in read_crl(crlfile):
                return f"listener {listener.address}'s crlfile {crlfile} does not list it"
        except (OSError, ValueError) as exc:
            return f"listener {listener.address}'s crlfile {crlfile} is unreadable ({exc})"
    return None


def revoked_still_active(ctx: Context):
    pki = ctx.need_pki()
    revoked = [c for c in pki.certificates if c.serial in pki.revoked]
    by_cn_live = {c.common_name for c in pki.certificates if c.serial not in pki.revoked}
    out = []
    for cert in revoked:
        when = pki.revoked[cert.serial]
        reasons = []
        if ctx.broker is not None:
            why = _crl_enforced(ctx.broker, cert.serial)
            if why:
                reasons.append(f"the broker does not refuse it: {why}")
        lines = []
        if ctx.log is not None and cert.common_name not in by_cn_live:  # else a new certificate may be the one
            lines = [
                e.line
                for e in ctx.log
                if e.kind == "connect" and e.username == cert.common_name and e.time >= when.timestamp()
            ]
            if lines:
                reasons.append(f"it connected {len(lines)} times after its revocation on {iso(when)}")
        if reasons:
            out.append(
                finding(
                    "DEVICE_CERTIFICATE",
                    {"deviceCertificateId": cert.certificate_id},
                    "CERTIFICATE_REVOKED_BY_ISSUER",
                    f"certificate {cert.common_name!r} is revoked but " + "; ".join(reasons),
                    revokedAt=iso(when),
                    logFile=ctx.log_path if lines else None,
                    logLines=lines[:10] or None,
                    **_info(cert),
                )
            )
    return len(revoked), out


CHECKS = [
    Check(
        "DEVICE_CERTIFICATE_SHARED_CHECK",
        CRITICAL,
        ("log",),
        shared_certificate,
        description="one certificate in concurrent connections with different client ids (broker log)",
    ),
    Check(
        "CONFLICTING_CLIENT_IDS_CHECK",
        HIGH,
        ("log",),
        conflicting_client_ids,
        description="one client id used by several connections that disconnect each other (broker log)",
    ),
    Check(
        "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
        MEDIUM,
        ("pki",),
        revoked_still_active,
        description="a revoked certificate the broker does not refuse, or seen connecting after revocation",
    ),
]
