"""Broker control on a real Mosquitto with the dynamic security plugin, configured by
`broker-config --dynamic-security`: quarantine, release, disable, enable as devices see them.

Negative checks use a marker (see tests/reliability/test_fleet_security.py): after the forbidden
message an allowed one goes the same way; once the marker has arrived, the forbidden one would have.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

from garrison.detect.respond import brokercontrol
from garrison.wire.topics import control_topic, reply_topic, report_topic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynsec_fleet import DynsecFleet  # noqa: E402
from fixtures import wait_for  # noqa: E402
from mqtt_clients import Client  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None or brokercontrol.plugin_path() is None,
                                reason="mosquitto with its dynamic security plugin is not installed")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = DynsecFleet(tmp_path_factory.mktemp("dynsec"))
    yield fleet
    fleet.stop()


@pytest.fixture
def engine_control(fleet):
    engine, control = fleet.engine_with_control()
    yield engine, control
    engine.close()


def _marker_check(device: Client, observer: Client, forbidden_topic: str, allowed_topic: str) -> bool:
    """Publish on a forbidden topic then on an allowed one; True if the forbidden one arrived."""
    device.publish(forbidden_topic, b"forbidden")
    device.publish(allowed_topic, b"marker")
    wait_for(lambda: observer.received(allowed_topic), what="the marker")
    return bool(observer.received(forbidden_topic))


def test_broker_config_loads_the_plugin_with_the_engine_as_admin(fleet):
    text = fleet.conf.read_text()
    assert f"plugin {brokercontrol.plugin_path()}" in text
    assert text.index("plugin ") < text.index("acl_file ")
    state = (fleet.conf.parent / "dynamic-security" / "dynamic-security.json")
    assert state.stat().st_mode & 0o077 == 0
    assert "pattern read garrison/things/%u/control" in (fleet.conf.parent / "acl").read_text()


def test_a_quarantined_device_keeps_reporting_and_loses_everything_else_until_released(fleet, engine_control):
    engine, control = engine_control
    device = fleet.device("pump-1").wait_connected()
    try:
        engine.subscribe(report_topic("+", "json"))
        assert device.subscribe(reply_topic("pump-1", "json", "accepted"), control_topic("pump-1")) == [1, 1]
        # before: the control topic reaches it (the ACL file's least privilege)
        engine.publish(control_topic("pump-1"), b"c1")
        wait_for(lambda: device.received(control_topic("pump-1")), what="a control message before quarantine")

        assert "quarantined" in control.quarantine("pump-1")
        wait_for(lambda: device.ended.is_set(), what="the quarantined device's connection to drop")
        device.close()
        device = fleet.device("pump-1").wait_connected()
        # it reports and hears the replies
        device.subscribe(reply_topic("pump-1", "json", "accepted"))
        device.publish(report_topic("pump-1", "json"), b"report")
        wait_for(lambda: engine.received(report_topic("pump-1", "json")), what="a quarantined device's report")
        engine.publish(reply_topic("pump-1", "json", "accepted"), b"ok")
        wait_for(lambda: device.received(reply_topic("pump-1", "json", "accepted")), what="its reply")
        # it can subscribe to nothing else and receives nothing else
        assert device.subscribe(control_topic("pump-1"), "#", "$aws/#") == [0x80, 0x80, 0x80]
        engine.publish(control_topic("pump-1"), b"c2")
        engine.publish(reply_topic("pump-1", "json", "accepted"), b"marker")
        wait_for(lambda: len(device.received(reply_topic("pump-1", "json", "accepted"))) == 2, what="the marker")
        assert device.received(control_topic("pump-1")) == []
        # it can publish nothing else (another thing's report, a reply, any topic)
        for forbidden in (report_topic("pump-2", "json"), "pump-1/anything"):
            engine.subscribe(forbidden)
            assert not _marker_check(device, engine, forbidden, report_topic("pump-1", "json")), forbidden
            engine.messages.clear()

        assert "released" in control.release("pump-1")
        wait_for(lambda: device.ended.is_set(), what="the released device's connection to drop")
        device.close()
        device = fleet.device("pump-1").wait_connected()
        device.subscribe(control_topic("pump-1"))
        engine.publish(control_topic("pump-1"), b"c3")
        wait_for(lambda: device.received(control_topic("pump-1")), what="full rights after the release")
        assert "not quarantined" in control.release("pump-1")
    finally:
        device.close()


def test_a_disabled_device_is_disconnected_and_gets_nothing_on_reconnect_until_enabled(fleet, engine_control):
    engine, control = engine_control
    device = fleet.device("pump-2").wait_connected()
    try:
        engine.subscribe(report_topic("+", "json"))
        assert "disabled" in control.disable("pump-2")
        wait_for(lambda: device.ended.is_set(), what="the disabled device's connection to drop")
        device.close()
        again = fleet.device("pump-2")
        again.refused(5) if not again.connected.wait(5) else None
        if again.connected.is_set():
            # Mosquitto 2.0 lets a certificate identity complete the MQTT connection: it must get nothing
            assert again.subscribe(reply_topic("pump-2", "json", "accepted")) == [0x80]
            again.publish(report_topic("pump-2", "json"), b"from a disabled device")
            other = fleet.device("pump-1").wait_connected()
            other.publish(report_topic("pump-1", "json"), b"marker")
            wait_for(lambda: engine.received(report_topic("pump-1", "json")), what="the marker")
            other.close()
            assert engine.received(report_topic("pump-2", "json")) == []
        again.close()
        assert "enabled" in control.enable("pump-2")
        device = fleet.device("pump-2").wait_connected()
        device.publish(report_topic("pump-2", "json"), b"back")
        wait_for(lambda: engine.received(report_topic("pump-2", "json")), what="a report after enable")
    finally:
        device.close()


def test_a_device_cannot_command_the_plugin_nor_read_its_answers(fleet, engine_control):
    _, control = engine_control
    device = fleet.device("pump-1").wait_connected()
    try:
        device.subscribe(brokercontrol.DYNSEC_RESPONSE_TOPIC, "$CONTROL/#")
        device.publish(brokercontrol.DYNSEC_COMMAND_TOPIC,
                       b'{"commands":[{"command":"disableClient","username":"pump-2"},'
                       b'{"command":"addClientRole","username":"pump-1","rolename":"garrison-admin"}]}')
        assert brokercontrol.DISABLED_ROLE not in control.client_roles("pump-2")   # the engine's own answer came
        assert brokercontrol.ADMIN_ROLE not in control.client_roles("pump-1")
        assert device.received() == []
    finally:
        device.close()


def test_broker_config_cli_keeps_the_plugins_state_on_force(tmp_path):
    from garrison.detect.ops import brokerconf, pki
    ca = pki.FleetCA(tmp_path / "pki")
    ca.init()
    cert, key = ca.issue_server(["localhost"])
    argv = ["--dir", str(tmp_path / "out"), "--ca", str(ca.cert_path), "--cert", str(cert), "--key", str(key),
            "--dynamic-security"]
    assert brokerconf.main(argv) == 0
    state = tmp_path / "out" / "dynamic-security" / "dynamic-security.json"
    doc = json.loads(state.read_text())
    assert [c["username"] for c in doc["clients"]] == ["garrison-detect"]
    assert doc["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                       "subscribe": False, "unsubscribe": True}
    state.write_text(state.read_text().replace('"groups": []', '"groups": [{"groupname": "kept"}]'))
    assert brokerconf.main(argv + ["--force"]) == 0
    assert "kept" in state.read_text()   # the quarantines in force survive a regenerated config
    assert "plugin_opt_config_file" in (tmp_path / "out" / "mosquitto.conf").read_text()


class _AnsweringLink:
    """Answers each command at once, as the broker would, after a stray response whose
    correlationData is a list (unhashable: it used to raise TypeError in on_response, which runs
    on paho's network thread)."""

    def __init__(self):
        self.control = None

    def publish(self, topic, payload, qos=0):
        commands = json.loads(payload)["commands"]
        responses = [{"correlationData": ["not", "ours"]}]
        responses += [{"command": c["command"], "correlationData": c["correlationData"]} for c in commands]
        self.control.on_response(json.dumps({"responses": responses}).encode())


def test_a_response_with_an_unhashable_correlation_id_is_ignored():
    link = _AnsweringLink()
    control = link.control = brokercontrol.BrokerControl(link, timeout_s=1)
    answers = control.send([{"command": "getClient", "username": "pump-9"}])
    assert [a["command"] for a in answers] == ["getClient"]
    assert control.client_roles("pump-9") == []
