"""The posture collector on fixture trees (like node_exporter's) and on this machine, and the
engine's DEVICE_HARDENING_CHECK over the posture reports it stored."""
import os
import time
import warnings
from pathlib import Path

import pytest

from garrison.agent import report
from garrison.wire.values import custom_metric
from garrison.collectors import posture
from garrison.detect.audit.store import AuditStore
from garrison.detect.audit.task import AuditSources, run_audit
from garrison.detect.engine import Engine
from garrison.detect.state.store import Store

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _sock(i, local, state):
    return f"   {i}: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 {1000 + i} 1\n"


def _crypt(password):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))


def tree(root: Path, hardened: bool) -> Path:
    (root / "proc/net").mkdir(parents=True)
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    if hardened:
        tcp = [_sock(0, "0100007F:075B", "0A"), _sock(1, "00000000:0016", "0A")]     # mqtt on loopback, ssh
        udp = [_sock(0, "00000000:0044", "07")]                                          # dhcp client
        (root / "etc/ssh/sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n")
        (root / "etc/ssh/sshd_config.d/10-hardening.conf").write_text(
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n")   # first value wins
        shadow = f"root:!:19000::::::\npi:{_crypt('a-long-unique-one') or '!'}:19000::::::\n"
        sysctls = {"kernel/randomize_va_space": "2", "net/ipv4/ip_forward": "0", "kernel/kptr_restrict": "1"}
    else:
        tcp = [_sock(0, "00000000:0017", "0A"), _sock(1, "00000000:075B", "0A"), _sock(2, "00000000:0015", "01")]
        udp = [_sock(0, "00000000:0045", "07")]
        (root / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\n#PasswordAuthentication no\n")
        shadow = f"root:!:19000::::::\npi:{_crypt('raspberry') or ''}:19000::::::\nguest::19000::::::\n"
        sysctls = {"kernel/randomize_va_space": "0", "net/ipv4/ip_forward": "1", "kernel/kptr_restrict": "1"}
        evil = root / "usr/bin/evil"
        evil.write_text("#!/bin/sh\n")
        os.chmod(evil, 0o777)
    (root / "proc/net/tcp").write_text(HEADER + "".join(tcp))
    (root / "proc/net/udp").write_text(HEADER + "".join(udp))
    (root / "etc/shadow").write_text(shadow)
    for name, value in sysctls.items():
        (root / "proc/sys" / name).write_text(value + "\n")
    os.chmod(root / "usr/bin/", 0o755)
    return root


def values(metrics):
    return {k: v["string_list"] if isinstance(v, dict) else v for k, v in metrics.items()}


def test_a_weak_device_tree_reports_every_weakness(tmp_path):
    got = values(posture.collect_posture(str(tree(tmp_path, hardened=False))))
    assert got["posture:insecure_services"] == ["mqtt:1883/tcp", "telnet:23/tcp", "tftp:69/udp"]  # ftp not listening
    assert got["posture:ssh_permit_root_login"] == 1 and got["posture:ssh_password_authentication"] == 1
    expected = ["guest:empty-password"] + (["pi:default-password"] if _crypt("x") else [])
    assert sorted(got["posture:weak_password_accounts"]) == sorted(expected)
    assert got["posture:world_writable_path_files"] == ["/usr/bin/evil"]
    assert got["posture:sysctl_unhardened"] == ["kernel.randomize_va_space=0", "net.ipv4.ip_forward=1"]
    report.build(1, custom_metrics=posture.collect_posture(str(tmp_path)))   # valid custom metrics


def test_a_hardened_device_tree_reports_nothing(tmp_path):
    got = values(posture.collect_posture(str(tree(tmp_path, hardened=True))))
    assert got == {"posture:insecure_services": [], "posture:ssh_permit_root_login": 0,
                   "posture:ssh_password_authentication": 0, "posture:weak_password_accounts": [],
                   "posture:world_writable_path_files": [], "posture:sysctl_unhardened": []}


def test_checks_are_switchable_and_unreadable_shadow_is_left_out(tmp_path):
    root = tree(tmp_path, hardened=False)
    got = posture.collect_posture(str(root), checks=["ssh"])
    assert set(got) == {"posture:ssh_permit_root_login", "posture:ssh_password_authentication"}
    (root / "etc/shadow").unlink()   # as for an agent without root
    assert "posture:weak_password_accounts" not in posture.collect_posture(str(root), checks=["accounts"])
    with pytest.raises(ValueError):
        posture.PostureCollector(checks=["nope"])


def test_live_collection_is_cheap_and_cached():
    collector = posture.PostureCollector()
    start = time.perf_counter()
    first = collector.collect()
    elapsed = time.perf_counter() - start
    assert first.success, first.error
    assert "posture:insecure_services" in first.data and "posture:sysctl_unhardened" in first.data
    assert elapsed < 1.0, f"posture took {elapsed:.3f}s"
    again = collector.collect()
    assert again.data == first.data and again.duration_s == 0.0   # cached within min_interval


def _report(report_id, metrics):
    return {"header": {"report_id": report_id, "version": "1.0"},
            "custom_metrics": {k: custom_metric(v) for k, v in metrics.items()}}


def test_device_hardening_check_reads_each_things_latest_posture(tmp_path):
    store = Store(str(tmp_path / "engine.db"))
    engine = Engine(store, ml=None)
    weak = posture.collect_posture(str(tree(tmp_path / "weak", hardened=False)))
    good = posture.collect_posture(str(tree(tmp_path / "good", hardened=True)))
    engine.accept("cam-weak", _report(1000, weak), 1000)
    engine.accept("cam-good", _report(1000, weak), 1000)
    engine.accept("cam-good", _report(2000, good), 2000)   # fixed since: the latest report counts
    engine.accept("cam-good", _report(3000, {"other": 1}), 3000)   # a report without posture keeps the last
    astore = AuditStore(store)
    result = run_audit(AuditSources(), ["DEVICE_HARDENING_CHECK"], astore)
    findings = result["findings"]
    assert {f["nonCompliantResource"]["resourceIdentifier"]["thingName"] for f in findings} == {"cam-weak"}
    codes = {f["reasonForNonComplianceCode"] for f in findings}
    assert {"INSECURE_SERVICE_LISTENING", "SSH_ROOT_LOGIN_PERMITTED", "SSH_PASSWORD_AUTHENTICATION_ENABLED",
            "WEAK_ACCOUNT_PASSWORD", "WORLD_WRITABLE_PATH_FILES", "KERNEL_HARDENING_DISABLED"} == codes
    detail = result["task"]["auditDetails"]["DEVICE_HARDENING_CHECK"]
    assert detail["totalResourcesCount"] == 2 and detail["nonCompliantResourcesCount"] == 1
    telnet = [f for f in findings if f["reasonForNonComplianceCode"] == "INSECURE_SERVICE_LISTENING"][0]
    assert "telnet:23/tcp" in telnet["reasonForNonCompliance"]
    store.close()
