"""DEVICE_HARDENING_CHECK: each thing's latest posture report (garrison.collectors.posture's custom
metrics, kept by garrison.detect.audit.store.record_posture) as findings."""

from typing import Any, Dict, List

from garrison.collectors.posture import METRICS
from garrison.detect.audit.checks import MEDIUM, Check, Context, finding

# metric -> (reason code, what it means)
REASONS = {
    "insecure_services": ("INSECURE_SERVICE_LISTENING", "insecure services listening: {}"),
    "ssh_permit_root_login": ("SSH_ROOT_LOGIN_PERMITTED", "sshd permits root login"),
    "ssh_password_authentication": ("SSH_PASSWORD_AUTHENTICATION_ENABLED", "sshd accepts passwords"),
    "weak_password_accounts": ("WEAK_ACCOUNT_PASSWORD", "accounts with an empty or well-known password: {}"),
    "world_writable_path_files": ("WORLD_WRITABLE_PATH_FILES", "world-writable files in PATH directories: {}"),
    "sysctl_unhardened": ("KERNEL_HARDENING_DISABLED", "kernel settings not hardened: {}"),
}


def _value(entry: Any) -> Any:
    """The value of a stored custom metric ([{"number": 1}] or the bare value)."""
    if isinstance(entry, list) and entry and isinstance(entry[0], dict):
        return next(iter(entry[0].values()))
    return entry


def device_hardening(ctx: Context):
    out = []
    postures = ctx.need_postures()
    for thing, posture in sorted(postures.items()):
        metrics: Dict[str, Any] = posture.get("metrics") or {}
        for key, (code, text) in REASONS.items():
            value = _value(metrics.get(METRICS[key]))
            bad = bool(value) if not isinstance(value, list) else len(value) > 0
            if not bad:
                continue
            shown = (
                ", ".join(map(str, value[:10])) + (" ..." if len(value) > 10 else "")
                if isinstance(value, list)
                else value
            )
            out.append(
                finding(
                    "THING",
                    {"thingName": thing},
                    code,
                    f"{thing}: " + text.format(shown),
                    thingName=thing,
                    metric=METRICS[key],
                    value=value,
                    reportedAt=posture.get("time_ms", 0) / 1000.0,
                )
            )
    return len(postures), out


CHECKS: List[Check] = [
    Check(
        "DEVICE_HARDENING_CHECK",
        MEDIUM,
        ("postures",),
        device_hardening,
        description="device posture from the agent's posture collector (latest report per thing)",
    ),
]
