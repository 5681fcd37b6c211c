"""The audit checks: names, severities, the sources each needs, and the registry.

A check is a function `(ctx) -> (total_resources, [finding])`, where a finding is the part of
AWS's AuditFinding a check knows (nonCompliantResource, reasonForNonComplianceCode,
reasonForNonCompliance); garrison.detect.audit.task adds ids, suppression and the task's fields.
"""

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from garrison.detect.audit.sources import BrokerConfig, LogEvent, Pki

CRITICAL, HIGH, MEDIUM, LOW = "CRITICAL", "HIGH", "MEDIUM", "LOW"
T = TypeVar("T")


@dataclass
class Settings:
    expiring_days: int = 30  # DEVICE/CA_CERTIFICATE_EXPIRING_CHECK threshold
    age_days: int = 365  # DEVICE_CERTIFICATE_AGE_CHECK threshold
    debian_blocklist: Optional[Path] = None
    engine_identity: Optional[str] = None  # default: the PKI's engine.name, else garrison-detect
    min_takeovers: int = 2  # CONFLICTING_CLIENT_IDS_CHECK: takeovers that make a conflict


@dataclass
class Context:
    now: datetime.datetime
    settings: Settings = field(default_factory=Settings)
    pki: Optional[Pki] = None
    broker: Optional[BrokerConfig] = None
    log: Optional[List[LogEvent]] = None
    log_path: Optional[str] = None
    postures: Optional[Dict[str, Dict[str, Any]]] = None  # thing -> {"time_ms", "metrics"}

    def has(self, source: str) -> bool:
        return getattr(self, source) is not None

    # A check's sources: run_audit runs a check only when those it `needs` are present, so these
    # raise only for a check that uses a source it did not declare.
    def need_pki(self) -> Pki:
        return _present(self.pki, "pki")

    def need_broker(self) -> BrokerConfig:
        return _present(self.broker, "broker")

    def need_log(self) -> List[LogEvent]:
        return _present(self.log, "log")

    def need_postures(self) -> Dict[str, Dict[str, Any]]:
        return _present(self.postures, "postures")


def _present(value: Optional[T], source: str) -> T:
    if value is None:
        raise LookupError(f"the check reads the {source} source without declaring it in its needs")
    return value


@dataclass(frozen=True)
class Check:
    name: str
    severity: str
    needs: Tuple[str, ...]  # Context attributes that must be present
    run: Callable[[Context], Tuple[int, List[Dict[str, Any]]]]
    enabled_by_default: bool = True
    description: str = ""


def finding(resource_type: str, identifier: Dict[str, Any], code: str, reason: str, **info: Any) -> Dict[str, Any]:
    return {
        "nonCompliantResource": {
            "resourceType": resource_type,
            "resourceIdentifier": identifier,
            "additionalInfo": {k: v for k, v in info.items() if v is not None},
        },
        "reasonForNonComplianceCode": code,
        "reasonForNonCompliance": reason,
    }


def resource_key(identifier: Dict[str, Any]) -> str:
    """One string for a resourceIdentifier (what suppressions name)."""
    parts = []
    for value in identifier.values():
        parts += [str(v) for v in value.values()] if isinstance(value, dict) else [str(value)]
    return "/".join(parts)


def registry() -> Dict[str, Check]:
    from garrison.detect.audit import brokerchecks, certchecks, connchecks, posturechecks

    checks = certchecks.CHECKS + brokerchecks.CHECKS + connchecks.CHECKS + posturechecks.CHECKS
    return {c.name: c for c in checks}


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
