"""Mitigation actions on an audit task's findings (AWS's audit mitigation actions):

  UPDATE_DEVICE_CERTIFICATE       revoke the device certificate (DIR/crl.pem), copy the CRL next to
                                  a broker-config generated mosquitto.conf and point crlfile at it:
                                  Mosquitto takes a new crlfile only when it restarts, a changed CRL
                                  on SIGHUP)
  ADD_THINGS_TO_THING_GROUP       add the findings' things to a group (default "quarantine")
  ENABLE_IOT_LOGGING              turn on the broker's connection logging in its config
  REPLACE_DEFAULT_POLICY_VERSION  replace the ACL with broker-config's least-privilege one
  PUBLISH_FINDINGS_TO_SNS         hand each finding to the alert targets

Dry run unless `apply`: the actions log (garrison-detect actions list) says what would be done.
Every action, real or not, is written there. Where the broker's files changed, the broker is
sent SIGHUP (pid from --broker-pid or the config's pid_file) so it reloads them; edited files
are copied to FILE.bak-<epoch> first.
"""

import datetime
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from garrison.detect.audit.checks import Context
from garrison.detect.audit.store import AuditStore
from garrison.detect.audit.task import AuditError

# the broker-file helpers are shared with the `disable` response (garrison.detect.respond.revocation)
from garrison.detect.ops.brokerfiles import (
    backup as _backup,
    broker_pid as _broker_pid,
    install_crl as _install_crl,
    reload as _reload,
    write_text as _write,
)

log = logging.getLogger("garrison.audit")

ACTIONS = {
    "UPDATE_DEVICE_CERTIFICATE": (
        "DEVICE_CERTIFICATE_SHARED_CHECK",
        "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
        "DEVICE_CERTIFICATE_EXPIRING_CHECK",
        "DEVICE_CERTIFICATE_AGE_CHECK",
        "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
    ),
    "ADD_THINGS_TO_THING_GROUP": (
        "DEVICE_CERTIFICATE_SHARED_CHECK",
        "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
        "DEVICE_CERTIFICATE_EXPIRING_CHECK",
        "DEVICE_CERTIFICATE_AGE_CHECK",
        "CONFLICTING_CLIENT_IDS_CHECK",
        "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK",
        "DEVICE_HARDENING_CHECK",
    ),
    "ENABLE_IOT_LOGGING": ("LOGGING_DISABLED_CHECK",),
    "REPLACE_DEFAULT_POLICY_VERSION": ("IOT_POLICY_OVERLY_PERMISSIVE_CHECK",),
    "PUBLISH_FINDINGS_TO_SNS": None,  # any check
}
_LOGGING_KEYS = ("connection_messages", "log_dest", "log_type", "log_timestamp")


def _thing(finding: Dict[str, Any]) -> Optional[str]:
    resource = finding["nonCompliantResource"]
    info, ident = resource.get("additionalInfo") or {}, resource.get("resourceIdentifier") or {}
    return info.get("thingName") or ident.get("thingName") or ident.get("clientId") or info.get("commonName")


def _enable_logging(conf_path: Path, now_ms: int, log_file: Optional[str]) -> List[str]:
    """Comment out what silences connection logging (also in include_dir files) and append
    broker-config's logging lines; returns the files changed."""
    from garrison.detect.audit.sources import load_broker_config
    from garrison.detect.ops.brokerconf import logging_lines

    conf = load_broker_config(conf_path)
    stale: Dict[str, List[int]] = {}
    for key in _LOGGING_KEYS:
        for directive in conf.all(key):
            stale.setdefault(directive.file, []).append(directive.line)
    changed = []
    for file, numbers in stale.items():
        path = Path(file)
        lines = path.read_text().splitlines()
        for number in numbers:
            lines[number - 1] = "# (garrison-detect audit mitigate) " + lines[number - 1]
        _backup(path, now_ms)
        _write(path, "\n".join(lines) + "\n")
        changed.append(file)
    text = conf_path.read_text()
    lines = logging_lines(Path(log_file) if log_file else None)
    _write(conf_path, text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
    if str(conf_path) not in changed:
        changed.append(str(conf_path))
    return changed


def mitigate(
    astore: AuditStore,
    task_id: str,
    check: str,
    action: str,
    apply: bool = False,
    group: str = "quarantine",
    alerts: Any = None,
    broker_pid: Optional[int] = None,
    now_ms: int = 0,
) -> List[Dict[str, Any]]:
    """Run `action` on the unsuppressed findings of `check` in task `task_id`; returns the
    actions log entries."""
    if action not in ACTIONS:
        raise AuditError(f"unknown action {action!r} (choose from {', '.join(ACTIONS)})")
    applies = ACTIONS[action]
    if applies is not None and check not in applies:
        raise AuditError(f"{action} does not apply to {check} (it applies to {', '.join(applies)})")
    task = astore.get_task(task_id)
    findings = [f for f in astore.findings(task_id, check) if not f.get("isSuppressed")]
    src = task.get("sources") or {}
    store = astore.store
    done: List[Dict[str, Any]] = []

    def record(thing: Optional[str], finding_id: Optional[str], outcome: str, detail: str) -> None:
        entry = {"type": action, "taskId": task_id, "findingId": finding_id, "checkName": check}
        store.log_action(now_ms, thing or "-", entry, not apply, outcome, detail)
        log.warning("audit mitigation %s (task %s, %s): %s: %s", action, task_id, check, outcome, detail)
        done.append({"thingName": thing, "action": entry, "dryRun": not apply, "outcome": outcome, "detail": detail})

    if not findings:
        record(None, None, "no-change", f"no unsuppressed {check} findings in task {task_id}")
        return done
    if action == "UPDATE_DEVICE_CERTIFICATE":
        from garrison.detect.ops.pki import FleetCA, PkiError

        if not src.get("pki_dir"):
            raise AuditError(f"task {task_id} has no PKI directory to revoke in")
        ca = FleetCA(Path(src["pki_dir"]))
        revoked_any = False
        for finding in findings:
            info = finding["nonCompliantResource"].get("additionalInfo") or {}
            cert_file, thing = info.get("file"), _thing(finding)
            what = f"revoke certificate {cert_file} ({thing})"
            if not cert_file:
                record(thing, finding["findingId"], "failed", f"{what}: the finding names no certificate file")
            elif not apply:
                record(thing, finding["findingId"], "dry-run", f"would {what}")
            else:
                try:
                    ca.revoke_certificate(Path(cert_file), "key_compromise")
                    revoked_any = True
                    record(thing, finding["findingId"], "done", what)
                except (PkiError, OSError) as exc:
                    record(thing, finding["findingId"], "failed", f"{what}: {exc}")
        if revoked_any and src.get("broker_config"):
            conf_path = Path(src["broker_config"])
            added = _install_crl(conf_path, ca.crl_path, now_ms)
            if added is None:
                record(
                    None,
                    None,
                    "done",
                    f"the CRL {ca.crl_path} is updated; {conf_path} was not written by "
                    "broker-config: point its crlfile at a copy the broker can read and reload it",
                )
            elif added:  # Mosquitto 2.0 reads a new crlfile setting only at start (a changed CRL on SIGHUP)
                record(
                    None,
                    None,
                    "done",
                    f"copied the CRL next to {conf_path} and added crlfile; restart the broker to enforce it",
                )
            else:
                record(
                    None,
                    None,
                    "done",
                    "refreshed the broker's copy of the CRL" + _reload(_broker_pid(src["broker_config"], broker_pid)),
                )
    elif action == "ADD_THINGS_TO_THING_GROUP":
        for finding in findings:
            thing = _thing(finding)
            what = f"add thing {thing} to group {group}"
            if not thing:
                record(None, finding["findingId"], "failed", "the finding names no thing")
            elif not apply:
                record(thing, finding["findingId"], "dry-run", f"would {what}")
            else:
                with store.transaction():
                    store.create_group(group, now_ms)
                    changed = store.add_to_group(group, thing, now_ms)
                record(thing, finding["findingId"], "done" if changed else "no-change", what)
    elif action in ("ENABLE_IOT_LOGGING", "REPLACE_DEFAULT_POLICY_VERSION"):
        conf = src.get("broker_config")
        if not conf:
            raise AuditError(f"task {task_id} has no broker config to change")
        finding_id = findings[0]["findingId"]
        if action == "ENABLE_IOT_LOGGING":
            what = f"enable connection logging in {conf}"
            if not apply:
                record(None, finding_id, "dry-run", f"would {what}")
            else:
                files = _enable_logging(Path(conf), now_ms, None)
                record(
                    None,
                    finding_id,
                    "done",
                    f"{what} (changed {', '.join(files)})" + _reload(_broker_pid(conf, broker_pid)),
                )
        else:
            from garrison.detect.audit.brokerchecks import _engine_identity
            from garrison.detect.audit.sources import load_broker_config
            from garrison.detect.ops.brokerconf import acl_text

            broker = load_broker_config(conf)
            if broker.acl_path is None:
                raise AuditError(f"{conf} has no acl_file to replace; run garrison-detect broker-config")
            ctx = Context(now=datetime.datetime.now(datetime.timezone.utc))
            if src.get("pki_dir"):
                from garrison.detect.audit.sources import load_pki

                ctx.pki = load_pki(src["pki_dir"])
            engine = _engine_identity(ctx)
            what = f"replace {broker.acl_path} with the least-privilege ACL (engine identity {engine})"
            if not apply:
                record(None, finding_id, "dry-run", f"would {what}")
            else:
                _backup(broker.acl_path, now_ms)
                _write(broker.acl_path, acl_text(engine))
                record(None, finding_id, "done", what + _reload(_broker_pid(conf, broker_pid)))
    else:  # PUBLISH_FINDINGS_TO_SNS
        for finding in findings:
            what = "publish the finding to the alert targets"
            if not apply:
                record(_thing(finding), finding["findingId"], "dry-run", f"would {what}")
            elif alerts is None:
                record(_thing(finding), finding["findingId"], "failed", f"{what}: no alert targets configured")
            else:
                alerts.deliver(dict(finding, auditMitigation=True))
                record(_thing(finding), finding["findingId"], "done", what)
    return done
