"""Broker checks on hand-written Mosquitto configs (include_dir, acl_file), and the log parser."""
from garrison.detect.audit.sources import load_broker_config, parse_log_lines
from garrison.detect.audit.task import AuditSources, run_audit

BROKER_CHECKS = ("LOGGING_DISABLED_CHECK", "BROKER_ANONYMOUS_ACCESS_CHECK", "BROKER_PLAINTEXT_LISTENER_CHECK",
                 "IOT_POLICY_OVERLY_PERMISSIVE_CHECK")


def audit(conf, *checks):
    result = run_audit(AuditSources(broker_config=str(conf)), list(checks or BROKER_CHECKS))
    return result["task"], result["findings"]


def write_bad_broker(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "mosquitto.conf").write_text(
        "# a broker someone set up by hand\n"
        "per_listener_settings false\n"
        "acl_file acl\n"
        "include_dir conf.d\n"
        "listener 8883\n"
        "certfile /etc/mosquitto/server.crt\n"
        "keyfile /etc/mosquitto/server.key\n")
    (tmp_path / "conf.d" / "10-debug.conf").write_text(
        "# left over from debugging\n"
        "listener 1883 0.0.0.0\n"
        "allow_anonymous true\n"
        "connection_messages false\n")
    (tmp_path / "acl").write_text(
        "topic read $SYS/#\n"
        "pattern write $aws/things/%u/defender/metrics/json\n"
        "pattern readwrite #\n"
        "pattern read $aws/things/+/defender/metrics/json/accepted\n"
        "user cam-1\n"
        "topic write $aws/things/cam-2/defender/metrics/json\n"
        "topic write garrison/alerts/cam-1\n"
        "user garrison-detect\n"
        "topic read $aws/things/+/defender/metrics/+\n")
    return tmp_path / "mosquitto.conf"


def test_a_permissive_hand_made_broker_fires_every_broker_check(tmp_path):
    conf = write_bad_broker(tmp_path)
    task, findings = audit(conf)
    assert {d["checkRunStatus"] for d in task["auditDetails"].values()} == {"COMPLETED_NON_COMPLIANT"}
    by_check = {}
    for f in findings:
        by_check.setdefault(f["checkName"], []).append(f)
    included = str(tmp_path / "conf.d" / "10-debug.conf")
    anon = by_check["BROKER_ANONYMOUS_ACCESS_CHECK"]   # per_listener_settings false: global, both listeners
    assert [f["nonCompliantResource"]["resourceIdentifier"]["listener"] for f in anon] == ["0.0.0.0:1883",
                                                                                          "0.0.0.0:8883"]
    assert {(f["nonCompliantResource"]["additionalInfo"]["file"], f["nonCompliantResource"]["additionalInfo"]["line"])
            for f in anon} == {(included, 3)}
    plain, = by_check["BROKER_PLAINTEXT_LISTENER_CHECK"]
    assert plain["nonCompliantResource"]["resourceIdentifier"] == {"listener": "0.0.0.0:1883"}
    assert (plain["nonCompliantResource"]["additionalInfo"]["file"], plain["nonCompliantResource"]["additionalInfo"]
            ["line"]) == (included, 2)
    logging, = by_check["LOGGING_DISABLED_CHECK"]
    assert "connection_messages false" in logging["reasonForNonCompliance"]
    policy = {f["nonCompliantResource"]["additionalInfo"]["line"]: f for f in
              by_check["IOT_POLICY_OVERLY_PERMISSIVE_CHECK"]}
    assert sorted(policy) == [1, 3, 4, 6, 7]   # $SYS to anonymous, '#', others' replies, cam-2's topic, alerts
    assert "every topic" in policy[3]["reasonForNonCompliance"]
    assert "every thing" in policy[4]["reasonForNonCompliance"]
    assert "another thing, cam-2" in policy[6]["reasonForNonCompliance"]
    assert "publish alerts" in policy[7]["reasonForNonCompliance"]
    assert policy[6]["nonCompliantResource"]["resourceIdentifier"] == {
        "policyVersionIdentifier": {"policyName": "user:cam-1", "policyVersionId": "6"}}
    assert all(f["severity"] == "CRITICAL" for f in policy.values())


def test_anonymous_per_listener_and_loopback_plaintext(tmp_path):
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("per_listener_settings true\n"
                    "listener 1883 127.0.0.1\nallow_anonymous true\n"
                    "listener 8883\ncertfile /x.crt\nkeyfile /x.key\nallow_anonymous false\n"
                    "acl_file /dev/null\n")
    task, findings = audit(conf, "BROKER_ANONYMOUS_ACCESS_CHECK", "BROKER_PLAINTEXT_LISTENER_CHECK")
    assert [f["nonCompliantResource"]["resourceIdentifier"] for f in findings] == [{"listener": "127.0.0.1:1883"}]
    assert findings[0]["checkName"] == "BROKER_ANONYMOUS_ACCESS_CHECK"   # loopback plaintext is fine


def test_no_acl_file_and_log_dest_none(tmp_path):
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener 8883\ncertfile /x.crt\nkeyfile /x.key\nlog_dest none\nlog_type error\n")
    _, findings = audit(conf, "IOT_POLICY_OVERLY_PERMISSIVE_CHECK", "LOGGING_DISABLED_CHECK")
    reasons = {f["checkName"]: f["reasonForNonCompliance"] for f in findings}
    assert "no acl_file" in reasons["IOT_POLICY_OVERLY_PERMISSIVE_CHECK"]
    assert "log_dest none" in reasons["LOGGING_DISABLED_CHECK"]
    assert "notice" in reasons["LOGGING_DISABLED_CHECK"]


def test_mosquitto_without_listeners_is_loopback_only(tmp_path):
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("acl_file /dev/null\n")
    broker = load_broker_config(conf)
    assert [listener.address for listener in broker.listeners] == ["127.0.0.1:1883"]
    _, findings = audit(conf, "BROKER_PLAINTEXT_LISTENER_CHECK", "BROKER_ANONYMOUS_ACCESS_CHECK",
                        "LOGGING_DISABLED_CHECK")
    assert findings == []


def test_a_missing_source_fails_only_the_checks_that_need_it(tmp_path):
    result = run_audit(AuditSources(broker_config=str(tmp_path / "nope.conf")),
                       ["LOGGING_DISABLED_CHECK", "DEVICE_CERTIFICATE_EXPIRING_CHECK"])
    details = result["task"]["auditDetails"]
    assert details["LOGGING_DISABLED_CHECK"]["checkRunStatus"] == "FAILED"
    assert "nope.conf" in details["LOGGING_DISABLED_CHECK"]["message"]
    assert details["DEVICE_CERTIFICATE_EXPIRING_CHECK"]["checkRunStatus"] == "FAILED"
    assert "--pki" in details["DEVICE_CERTIFICATE_EXPIRING_CHECK"]["message"]
    assert result["task"]["taskStatus"] == "COMPLETED"


def test_log_parser_reads_mosquittos_lines():
    events = parse_log_lines([
        "1764400000: New connection from 10.0.0.5:50000 on port 8883.",
        "1764400000: New client connected from 10.0.0.5:50000 as cam-1 (p2, c1, k60, u'cam-1').",
        "1764400001: Client cam-1 already connected, closing old connection.",
        "1764400002: Client cam-1 disconnected.",
        "1764400003: Socket error on client cam-2, disconnecting.",
        "garbage", "1764400004: New client connected from [::1]:1 as x (p2, c1, k60).",
    ])
    assert [(e.kind, e.client_id, e.username, e.line) for e in events] == [
        ("connect", "cam-1", "cam-1", 2), ("takeover", "cam-1", None, 3), ("disconnect", "cam-1", None, 4),
        ("disconnect", "cam-2", None, 5), ("connect", "x", None, 7)]
    assert events[0].address == "10.0.0.5:50000" and events[0].time == 1764400000
