"""Mitigation actions: dry run first, every action in the actions log, the broker reloaded."""
import ssl

import pytest

from garrison.detect.audit.mitigate import mitigate
from garrison.detect.audit.store import AuditStore
from garrison.detect.audit.task import AuditError, AuditSources, run_audit
from garrison.detect.state.store import Store

from fixtures import wait_for
from helpers import Broker, fleet


class Recorder:
    def __init__(self):
        self.messages = []

    def deliver(self, message):
        self.messages.append(message)


@pytest.fixture
def setup(tmp_path):
    ca = fleet(tmp_path / "pki", things=("cam-1", "cam-2"))
    broker = Broker(tmp_path, ca).start()
    astore = AuditStore(Store(str(tmp_path / "e.db")))
    yield broker, astore
    broker.stop()
    astore.store.close()


def audit(broker, astore, *checks):
    src = AuditSources(pki_dir=str(broker.ca.dir), broker_config=str(broker.conf), broker_log=str(broker.log))
    return run_audit(src, list(checks), astore)


def test_revoking_a_shared_certificate_dry_run_then_apply(setup):
    broker, astore = setup
    a = broker.connect("cam-1", client_id="cam-1")
    b = broker.connect("cam-1", client_id="cam-1-twin")
    wait_for(lambda: "as cam-1-twin" in broker.log.read_text(), what="the twin logged")
    a.close()
    b.close()
    task_id = audit(broker, astore, "DEVICE_CERTIFICATE_SHARED_CHECK")["task"]["taskId"]
    done = mitigate(astore, task_id, "DEVICE_CERTIFICATE_SHARED_CHECK", "UPDATE_DEVICE_CERTIFICATE", now_ms=1)
    assert [d["outcome"] for d in done] == ["dry-run"] and "would revoke" in done[0]["detail"]
    assert not broker.ca.crl_path.exists()
    broker.connect("cam-1").close()            # nothing changed
    done = mitigate(astore, task_id, "DEVICE_CERTIFICATE_SHARED_CHECK", "UPDATE_DEVICE_CERTIFICATE", apply=True,
                    broker_pid=broker.proc.pid, now_ms=2)
    assert [d["outcome"] for d in done] == ["done", "done"]
    assert "added crlfile" in done[1]["detail"] and "restart the broker" in done[1]["detail"]
    assert (broker.conf.parent / "crl.pem").read_bytes() == broker.ca.crl_path.read_bytes()
    assert "crlfile" in broker.conf.read_text()
    # Mosquitto takes a newly added crlfile at its next start (a changed CRL file on SIGHUP: see
    # test_broker_live.test_pki_revoke_cli_and_sighup_reloads_the_crl)
    broker.stop()
    broker.start()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        broker.connect("cam-1").close()
    broker.connect("cam-2").close()
    log = astore.store.list_actions()
    assert [(e["action"]["type"], e["dryRun"], e["outcome"]) for e in log] == [
        ("UPDATE_DEVICE_CERTIFICATE", True, "dry-run"), ("UPDATE_DEVICE_CERTIFICATE", False, "done"),
        ("UPDATE_DEVICE_CERTIFICATE", False, "done")]
    assert log[0]["action"]["taskId"] == task_id and log[0]["thingName"] == "cam-1"


def test_quarantine_and_publish(setup):
    broker, astore = setup
    held = [broker.connect(t, client_id="dup") for t in ("cam-1", "cam-2", "cam-1")]
    wait_for(lambda: broker.log.read_text().count("already connected") >= 2, what="takeovers")
    task_id = audit(broker, astore, "CONFLICTING_CLIENT_IDS_CHECK")["task"]["taskId"]
    done = mitigate(astore, task_id, "CONFLICTING_CLIENT_IDS_CHECK", "ADD_THINGS_TO_THING_GROUP", apply=True,
                    group="quarantine", now_ms=5)
    assert [(d["thingName"], d["outcome"]) for d in done] == [("dup", "done")]
    assert astore.store.groups_of("dup") == ["quarantine"]
    alerts = Recorder()
    mitigate(astore, task_id, "CONFLICTING_CLIENT_IDS_CHECK", "PUBLISH_FINDINGS_TO_SNS", apply=True, alerts=alerts)
    assert alerts.messages[0]["checkName"] == "CONFLICTING_CLIENT_IDS_CHECK"
    assert alerts.messages[0]["nonCompliantResource"]["resourceIdentifier"] == {"clientId": "dup"}
    with pytest.raises(AuditError):   # an action that does not fit the check
        mitigate(astore, task_id, "CONFLICTING_CLIENT_IDS_CHECK", "ENABLE_IOT_LOGGING")
    for sock in held:
        sock.close()


def test_enable_logging_and_replace_the_acl(tmp_path):
    conf, acl = tmp_path / "mosquitto.conf", tmp_path / "acl"
    conf.write_text(f"listener 8883\ncertfile /x.crt\nkeyfile /x.key\nacl_file {acl}\nconnection_messages false\n"
                    "log_type error\n")
    acl.write_text("pattern readwrite #\n")
    astore = AuditStore(Store(str(tmp_path / "e.db")))
    src = AuditSources(broker_config=str(conf))
    task_id = run_audit(src, ["LOGGING_DISABLED_CHECK", "IOT_POLICY_OVERLY_PERMISSIVE_CHECK"], astore)["task"]["taskId"]
    dry = mitigate(astore, task_id, "LOGGING_DISABLED_CHECK", "ENABLE_IOT_LOGGING")
    assert dry[0]["outcome"] == "dry-run" and "connection_messages false" in conf.read_text().splitlines()
    done = mitigate(astore, task_id, "LOGGING_DISABLED_CHECK", "ENABLE_IOT_LOGGING", apply=True, now_ms=7000)
    assert done[0]["outcome"] == "done" and "reload the broker" in done[0]["detail"]
    assert (tmp_path / "mosquitto.conf.bak-7").exists()
    done = mitigate(astore, task_id, "IOT_POLICY_OVERLY_PERMISSIVE_CHECK", "REPLACE_DEFAULT_POLICY_VERSION",
                    apply=True, now_ms=7000)
    assert done[0]["outcome"] == "done" and (tmp_path / "acl.bak-7").read_text() == "pattern readwrite #\n"
    after = run_audit(src, ["LOGGING_DISABLED_CHECK", "IOT_POLICY_OVERLY_PERMISSIVE_CHECK"])
    assert after["findings"] == [], after["findings"]
