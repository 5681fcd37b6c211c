"""`disable` made durable: where the engine knows the fleet PKI and the broker's configuration, the
disabled device's certificate is revoked into the CRL, the broker re-reads it (SIGHUP) and the
device's reconnection is refused at the TLS handshake, on a real Mosquitto 2.0 with TLS and the
dynamic security plugin (`broker-config --dynamic-security`), with the project's own certificates.
"""
import shutil
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from garrison.detect.respond import actions, brokercontrol
from garrison.detect.respond.revocation import NOT_DURABLE, Revocation
from garrison.detect.respond.runner import ActionRunner
from garrison.detect.state.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynsec_fleet import DynsecFleet  # noqa: E402
from fixtures import wait_for  # noqa: E402
from test_broker_control import engine_control  # noqa: E402,F401  (the engine's one connection, with BrokerControl)

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None or brokercontrol.plugin_path() is None,
                                reason="mosquitto with its dynamic security plugin is not installed")


@pytest.fixture
def fleet(tmp_path):
    fleet = DynsecFleet(tmp_path / "fleet")
    fleet.pid_file = tmp_path / "mosquitto.pid"   # Mosquitto writes one only as a daemon (-d): as an operator would
    fleet.pid_file.write_text(f"{fleet.proc.pid}\n")
    yield fleet
    fleet.stop()


CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 0])   # MQTT 3.1.1, clean, empty id


def handshake(fleet: DynsecFleet, thing: str, tls12: bool = False) -> None:
    """Connect with the thing's certificate and read the CONNACK; ssl.SSLError if the broker
    refuses the certificate. With TLS 1.3 (the default; the listener allows 1.2 and up) the
    client's side of the handshake ends before the broker has checked its certificate, so the
    refusal arrives at the first read; with TLS 1.2 the handshake itself fails."""
    cert, key = fleet.ca.thing_paths(thing)
    context = ssl.create_default_context(cafile=str(fleet.ca.cert_path))
    context.load_cert_chain(str(cert), str(key))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", fleet.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(CONNECT)
            connack = tls.recv(4)
            assert connack[:1] == b"\x20" and connack[3:4] == b"\x00", connack


def refused(fleet: DynsecFleet, thing: str, tls12: bool = False) -> str:
    with pytest.raises(ssl.SSLError) as info:
        handshake(fleet, thing, tls12)
    return str(info.value)


def revocation(fleet: DynsecFleet) -> Revocation:
    return Revocation(str(fleet.ca.dir), str(fleet.conf), str(fleet.pid_file))


def run(store: Store, runner: ActionRunner, kind: str, thing: str, dry_run: bool = False) -> dict:
    entry = actions.execute(store, actions.Action(kind), thing, int(time.time() * 1000), dry_run=dry_run, by="test")
    runner.run_pending()
    return next(e for e in store.list_actions(thing) if e["seq"] == entry["seq"])


def test_broker_config_with_dynamic_security_starts_an_empty_crl_the_listener_uses(fleet):
    text = fleet.conf.read_text()
    copy = (fleet.conf.parent / "crl.pem").resolve()
    assert f"plugin {brokercontrol.plugin_path()}" in text and f"crlfile {copy}" in text
    crl = x509.load_pem_x509_crl(fleet.ca.crl_path.read_bytes())
    assert len(crl) == 0 and copy.read_bytes() == fleet.ca.crl_path.read_bytes()
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(fleet.ca.cert_path.read_bytes()).public_key())
    handshake(fleet, "pump-1")   # an empty CRL refuses nobody
    handshake(fleet, "pump-2")


def test_a_disabled_device_is_dropped_and_its_reconnect_refused_at_the_tls_handshake(fleet, engine_control, tmp_path):
    _, control = engine_control
    store = Store(tmp_path / "engine.db")
    runner = ActionRunner(store, control, revocation=revocation(fleet))
    device = fleet.device("pump-1").wait_connected()
    other = fleet.device("pump-2").wait_connected()
    try:
        entry = run(store, runner, "disable", "pump-1")
        assert entry["outcome"] == "done", entry
        for step in (f"certificate {fleet.ca.thing_paths('pump-1')[0]} revoked in {fleet.ca.crl_path}",
                     "refreshed the broker's copy of the CRL", f"sent SIGHUP to the broker (pid {fleet.proc.pid})",
                     "disabled on the broker", "its reconnect is refused at the TLS handshake"):
            assert step in entry["detail"], (step, entry["detail"])
        wait_for(lambda: device.ended.is_set(), 10, "the disabled device's connection to drop")
        # at once, no waiting: the broker re-read the CRL before it dropped the device
        assert "CERTIFICATE_REVOKED" in refused(fleet, "pump-1", tls12=True)   # the TLS 1.2 alert
        refused(fleet, "pump-1")                                               # TLS 1.3: at the first read
        again = fleet.device("pump-1")       # as the agent reconnects: paho's TLS connect fails
        assert again.ended.wait(5) and not again.connected.is_set()
        assert not other.ended.is_set()      # the other device keeps its connection, and connects anew
        handshake(fleet, "pump-2")
        fleet.device("pump-2", client_id="second").wait_connected().close()

        # enable gives back the broker rights but says the certificate stays revoked
        entry = run(store, runner, "enable", "pump-1")
        assert entry["outcome"] == "done" and "stays revoked" in entry["detail"], entry
        assert "pki issue" in entry["detail"] and "new thing name" in entry["detail"]
        assert "CERTIFICATE_REVOKED" in refused(fleet, "pump-1", tls12=True)
        # disabling again is idempotent and says so
        entry = run(store, runner, "disable", "pump-1")
        assert entry["outcome"] == "done" and "was already revoked" in entry["detail"], entry
    finally:
        device.close()
        other.close()
        store.close()


def test_dry_run_changes_nothing(fleet, engine_control, tmp_path):
    _, control = engine_control
    store = Store(tmp_path / "engine.db")
    runner = ActionRunner(store, control, revocation=revocation(fleet))
    copy = fleet.conf.parent / "crl.pem"
    before = (fleet.ca.crl_path.read_bytes(), copy.read_bytes(), fleet.conf.read_text())
    device = fleet.device("pump-1").wait_connected()
    try:
        entry = run(store, runner, "disable", "pump-1", dry_run=True)
        assert entry["outcome"] == "dry-run" and entry["detail"] == "would disable thing pump-1 on the broker"
        assert (fleet.ca.crl_path.read_bytes(), copy.read_bytes(), fleet.conf.read_text()) == before
        assert control.client_roles("pump-1") == []
        assert "Reloading config" not in fleet.log.read_text()
        assert not device.ended.is_set()
        handshake(fleet, "pump-1")
    finally:
        device.close()
        store.close()


def test_without_the_pki_disable_drops_the_device_and_says_its_reconnect_is_not_refused(fleet, engine_control,
                                                                                      tmp_path):
    _, control = engine_control
    store = Store(tmp_path / "engine.db")
    assert Revocation.from_config({"broker_config": str(fleet.conf)}) is None
    runner = ActionRunner(store, control, revocation=None)
    device = fleet.device("pump-2").wait_connected()
    try:
        entry = run(store, runner, "disable", "pump-2")
        assert entry["outcome"] == "done" and entry["detail"].endswith(NOT_DURABLE), entry
        assert "its reconnect" in NOT_DURABLE and "not revoked" in NOT_DURABLE
        wait_for(lambda: device.ended.is_set(), 10, "the disabled device's connection to drop")
        handshake(fleet, "pump-2")   # the limit the entry states: the TLS handshake still succeeds
        assert x509.load_pem_x509_crl(fleet.ca.crl_path.read_bytes()).get_revoked_certificate_by_serial_number(
            x509.load_pem_x509_certificate(fleet.ca.thing_paths("pump-2")[0].read_bytes()).serial_number) is None
    finally:
        device.close()
        store.close()


def test_a_broker_that_cannot_be_signalled_makes_the_disable_fail_saying_so(fleet, engine_control, tmp_path):
    _, control = engine_control
    store = Store(tmp_path / "engine.db")
    runner = ActionRunner(store, control, revocation=Revocation(str(fleet.ca.dir), str(fleet.conf),
                                                                str(tmp_path / "no-such.pid")))
    try:
        entry = run(store, runner, "disable", "pump-2")
        assert entry["outcome"] == "failed", entry
        assert "revoked in" in entry["detail"] and "reload the broker (SIGHUP)" in entry["detail"]
        assert "its reconnect is refused only once the broker reloads" in entry["detail"]
        assert "disabled on the broker" in entry["detail"]   # the immediate step still happened
    finally:
        store.close()


def test_serve_disables_a_reporting_agent_for_good_with_the_pki_in_its_config(fleet, tmp_path):
    from test_responses_e2e import Agent, Serve
    audit = (f'[audit]\npki_dir = "{fleet.ca.dir}"\nbroker_config = "{fleet.conf}"\n'
             f'broker_pid_file = "{fleet.pid_file}"\n')
    serve = Serve(fleet, tmp_path / "engine", audit)   # the text lands after [actions]: its own table
    agent = Agent(fleet, "pump-1", tmp_path / "agent", interval=1.0)
    try:
        wait_for(lambda: serve.last_received_ms("pump-1"), 30, "the first report")
        result = serve.respond("disable", "pump-1")
        assert result["outcome"] == "done" and "refused at the TLS handshake" in result["detail"], result
        wait_for(lambda: not agent.daemon.transport.connected, 10, "the agent's connection to drop")
        assert "CERTIFICATE_REVOKED" in refused(fleet, "pump-1", tls12=True)
        # the agent keeps trying; the broker refuses each attempt's certificate
        failures = fleet.log.read_text().count("certificate verify failed")
        wait_for(lambda: fleet.log.read_text().count("certificate verify failed") > failures + 1, 30,
                 "the agent's reconnects to be refused")
        assert not agent.daemon.transport.connected
        handshake(fleet, "pump-2")
        result = serve.respond("enable", "pump-1")
        assert result["outcome"] == "done" and "stays revoked" in result["detail"], result
    finally:
        agent.stop()
        serve.stop()
