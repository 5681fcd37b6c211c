"""Nobody reports as someone else: the fleet PKI (garrison.detect.ops.pki), the generated Mosquitto
configuration (garrison.detect.ops.brokerconf) on a real Mosquitto, and `garrison-detect serve --strict`.

Negative checks ("the message never arrives") are made deterministic with a marker: after the
forbidden message, an allowed one goes the same way; once the marker has arrived, the
forbidden message would have arrived before it.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from garrison.detect.ops import brokerconf, pki
from fixtures import free_port, wait_for_port
from mqtt_clients import Client, wait_for

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")

PY = sys.executable
REPORT = "$aws/things/{}/defender/metrics/{}"
LONG_THING = "L" * 128  # AWS allows 128; RFC 5280 bounds a CN at 64


def run(*argv, check_rc=0):
    proc = subprocess.run([PY, "-m", *argv], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == check_rc, proc.stderr
    return proc


# ------------------------------------------------------------------------------------ PKI

def test_pki_cli_makes_a_ca_and_device_certificates_with_private_keys(tmp_path):
    d = tmp_path / "pki"
    run("garrison.detect.ops.pki", "init", "--dir", str(d))
    run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", "pump-17", "--days", "30")
    for key in (d / "ca.key", d / "things" / "pump-17.key"):
        assert key.stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    device = x509.load_pem_x509_certificate((d / "things" / "pump-17.crt").read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pump-17"
    assert device.issuer == ca.subject
    device.verify_directly_issued_by(ca)  # raises if the signature is not the CA's
    assert not device.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ExtendedKeyUsageOID.CLIENT_AUTH in device.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    lifetime = pki._not_after(device) - pki._not_before(device)
    assert 30 * 86400 <= lifetime.total_seconds() <= 30 * 86400 + 600


def test_pki_refuses_overwrites_bad_names_and_the_engine_identity(tmp_path):
    d = tmp_path / "pki"
    run("garrison.detect.ops.pki", "init", "--dir", str(d))
    ca_before = (d / "ca.key").read_bytes()
    again = run("garrison.detect.ops.pki", "init", "--dir", str(d), check_rc=2)
    assert "refusing to overwrite" in again.stderr and (d / "ca.key").read_bytes() == ca_before
    for bad in ("a/b", "+", "#", "", "x" * 129, "pump 1", "pümp"):
        result = run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", bad, check_rc=2)
        assert result.stderr.count("\n") == 1 and "invalid" in result.stderr
    run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", "x" * 128)
    run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", "a:B_9-z")
    key = (d / "things" / "a:B_9-z.key").read_bytes()
    assert "refusing" in run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", "a:B_9-z", check_rc=2).stderr
    assert (d / "things" / "a:B_9-z.key").read_bytes() == key
    run("garrison.detect.ops.pki", "engine", "--dir", str(d))
    assert "engine's identity" in run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", "garrison-detect",
                                      check_rc=2).stderr
    missing = run("garrison.detect.ops.pki", "issue", "--dir", str(tmp_path / "nope"), "--thing", "t", check_rc=2)
    assert "no fleet CA" in missing.stderr


def test_server_certificate_names_every_host(tmp_path):
    ca = pki.FleetCA(tmp_path)
    ca.init()
    cert_path, key_path = ca.issue_server(["broker.example.net", "10.0.0.5", "::1"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.net"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "::1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    with pytest.raises(pki.PkiError):
        pki.FleetCA(tmp_path / "other").issue_server(["bad host!"])


def test_broker_config_has_no_plain_listener_and_no_anonymous(tmp_path):
    ca = pki.FleetCA(tmp_path / "pki")
    ca.init()
    cert, key = ca.issue_server(["localhost"])
    conf_path, acl_path = brokerconf.write(tmp_path / "out", ca.cert_path, cert, key)
    lines = [line.strip() for line in conf_path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert [line for line in lines if line.startswith(("listener", "port "))] == ["listener 8883"]
    for expected in ("allow_anonymous false", "require_certificate true", "use_identity_as_username true",
                     "use_username_as_clientid true", f"acl_file {acl_path.resolve()}"):
        assert expected in lines
    unlocked, _ = brokerconf.write(tmp_path / "unlocked", ca.cert_path, cert, key, lock_client_ids=False)
    assert "use_username_as_clientid false" in unlocked.read_text().splitlines()
    result = run("garrison.detect.ops.brokerconf", "--dir", str(tmp_path / "out"), "--ca", str(ca.cert_path), "--cert",
                 str(cert), "--key", str(key), check_rc=2)
    assert "already exists" in result.stderr
    result = run("garrison.detect.ops.brokerconf", "--dir", str(tmp_path / "o2"), "--ca", str(tmp_path / "missing.crt"),
                 "--cert", str(cert), "--key", str(key), check_rc=2)
    assert "no such file" in result.stderr and result.stderr.count("\n") == 1


# ---------------------------------------------------------------------- a live TLS fleet

class Fleet:
    """A fleet CA, certificates for pump-1, pump-2 and the engine, and a Mosquitto started on
    the configuration `garrison-detect broker-config` generates."""

    def __init__(self, workdir: Path):
        self.ca = pki.FleetCA(workdir / "pki")
        self.ca.init()
        self.ca.issue_server(["localhost", "127.0.0.1"])
        self.engine_files = self.ca.issue_engine()
        for thing in ("pump-1", "pump-2", "unregistered-9", LONG_THING):
            self.ca.issue_thing(thing)
        self.port = free_port()
        conf, _ = brokerconf.write(workdir / "broker", self.ca.cert_path, self.ca.dir / "server.crt",
                                   self.ca.dir / "server.key", port=self.port, bind="127.0.0.1",
                                   persistence_dir=workdir / "persist",
                                   run_as="root" if os.geteuid() == 0 else None)
        (workdir / "persist").mkdir()
        self.log = workdir / "mosquitto.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=out, stderr=out)
        wait_for_port("127.0.0.1", self.port)

    def device(self, thing: str, **kwargs) -> Client:
        cert, key = self.ca.thing_paths(thing)
        return Client("127.0.0.1", self.port, str(self.ca.cert_path), str(cert), str(key), **kwargs)

    def engine(self, **kwargs) -> Client:
        cert, key = self.engine_files
        return Client("127.0.0.1", self.port, str(self.ca.cert_path), str(cert), str(key), **kwargs)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    yield fleet
    fleet.stop()


@pytest.fixture
def engine(fleet):
    client = fleet.engine(client_id="garrison-detect").wait_connected()  # as `serve` connects
    assert client.subscribe("$aws/things/+/defender/metrics/+") == [1]
    yield client
    client.close()


def test_a_device_publishes_its_own_reports_and_reads_its_own_replies(fleet, engine):
    device = fleet.device("pump-1").wait_connected()
    try:
        device.subscribe(REPORT.format("pump-1", "json") + "/accepted", REPORT.format("pump-1", "cbor") + "/rejected")
        for fmt in ("json", "cbor"):
            device.publish(REPORT.format("pump-1", fmt), f"report-{fmt}".encode())
            wait_for(lambda: engine.received(REPORT.format("pump-1", fmt)), what=f"the {fmt} report")
        assert [p for _, p in engine.received()] == [b"report-json", b"report-cbor"]
        engine.publish(REPORT.format("pump-1", "json") + "/accepted", b"ok")
        engine.publish(REPORT.format("pump-1", "cbor") + "/rejected", b"no")
        wait_for(lambda: len(device.received()) == 2, what="both replies")
        assert device.received() == [(REPORT.format("pump-1", "json") + "/accepted", b"ok"),
                                     (REPORT.format("pump-1", "cbor") + "/rejected", b"no")]
    finally:
        device.close()


def test_a_128_character_thing_name_is_its_identity(fleet, engine):
    device = fleet.device(LONG_THING).wait_connected()
    try:
        device.publish(REPORT.format("pump-2", "json"), b"forged")
        device.publish(REPORT.format(LONG_THING, "json"), b"long")
        wait_for(lambda: engine.received(), what="the report")
        assert engine.received() == [(REPORT.format(LONG_THING, "json"), b"long")]
    finally:
        device.close()


def test_a_device_cannot_publish_as_another_thing_nor_forge_replies_or_alerts(fleet, engine):
    victim = fleet.device("pump-2").wait_connected()
    attacker = fleet.device("pump-1").wait_connected()
    try:
        victim.subscribe(REPORT.format("pump-2", "json") + "/accepted")
        forged = [REPORT.format("pump-2", "json"), REPORT.format("pump-2", "cbor"),
                  REPORT.format("pump-2", "json") + "/accepted", REPORT.format("pump-1", "json") + "/accepted",
                  "garrison/alerts/pump-2", "$aws/things/pump-1/defender/metrics/xml", "pump-2/anything"]
        for topic in forged:
            attacker.publish(topic, b"forged")
        attacker.publish(REPORT.format("pump-1", "json"), b"marker")     # same connection, after them
        wait_for(lambda: engine.received(REPORT.format("pump-1", "json")), what="the marker")
        assert [p for _, p in engine.received()] == [b"marker"]
        engine.publish(REPORT.format("pump-2", "json") + "/accepted", b"genuine")
        wait_for(lambda: victim.received(), what="the genuine reply")
        assert victim.received() == [(REPORT.format("pump-2", "json") + "/accepted", b"genuine")]
    finally:
        attacker.close()
        victim.close()


def test_a_device_cannot_read_other_things_replies_or_reports(fleet, engine):
    snoop = fleet.device("pump-1").wait_connected()
    other = fleet.device("pump-2").wait_connected()
    try:
        # Mosquitto 2.0 grants SUBACK to any filter; the ACL is applied to every message delivered
        snoop.subscribe(REPORT.format("pump-2", "json") + "/accepted", "$aws/things/+/defender/metrics/+/+",
                        "$aws/things/+/defender/metrics/+", "#", "garrison/alerts/#")
        other.publish(REPORT.format("pump-2", "json"), b"pump-2's report")
        wait_for(lambda: engine.received(REPORT.format("pump-2", "json")), what="pump-2's report at the engine")
        engine.publish(REPORT.format("pump-2", "json") + "/accepted", b"pump-2's reply")
        engine.publish("garrison/alerts/pump-2", b"alert")
        engine.publish(REPORT.format("pump-1", "json") + "/accepted", b"marker")
        wait_for(lambda: snoop.received(), what="the marker")
        assert snoop.received() == [(REPORT.format("pump-1", "json") + "/accepted", b"marker")]
    finally:
        snoop.close()
        other.close()


def test_a_device_cannot_take_over_the_engines_session(fleet, engine):
    # use_username_as_clientid: the client id asked for is replaced by the certificate's CN
    intruder = fleet.device("pump-1", client_id="garrison-detect").wait_connected()
    try:
        intruder.publish(REPORT.format("pump-1", "json"), b"after-takeover-attempt")
        wait_for(lambda: engine.received(REPORT.format("pump-1", "json")), what="the report at the engine")
        assert engine.connected.is_set() and not engine.ended.is_set()
    finally:
        intruder.close()


def test_clients_without_a_fleet_certificate_cannot_connect(fleet, tmp_path):
    no_cert = Client("127.0.0.1", fleet.port, str(fleet.ca.cert_path))
    assert no_cert.refused()
    rogue = pki.FleetCA(tmp_path / "rogue")
    rogue.init()
    cert, key = rogue.issue_thing("pump-1")                        # the right name, the wrong CA
    impostor = Client("127.0.0.1", fleet.port, str(fleet.ca.cert_path), str(cert), str(key))
    assert impostor.refused()
    plain = Client("127.0.0.1", fleet.port)                        # no TLS at all
    assert plain.refused()
    for client in (no_cert, impostor, plain):
        assert not client.connected.is_set()
        client.close()


# ------------------------------------------------------------ the engine on this broker

def test_serve_strict_over_mutual_tls_rejects_unregistered_things(fleet, tmp_path):
    from garrison.agent import report as wire
    db = tmp_path / "engine.db"
    config = tmp_path / "engine.toml"
    config.write_text("[alerts]\nlog = true\nmqtt = false\n")  # one MQTT connection: see docs/security.md
    cli = [PY, "-m", "garrison.detect.cli"]
    subprocess.run(cli + ["things", "add", "pump-1", "--db", str(db)], check=True, capture_output=True)
    cert, key = fleet.engine_files
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(cli + ["serve", "--broker", f"mqtts://localhost:{fleet.port}", "--db", str(db),
                                        "--config", str(config), "--strict", "--min-report-interval", "0",
                                        "--ca", str(fleet.ca.cert_path), "--cert", str(cert), "--key", str(key)],
                                 stdout=log, stderr=log)
    devices = []
    try:
        wait_for(lambda: "listening for Device Defender reports" in log_path.read_text() or serve.poll() is not None,
                 30, "serve to connect")
        assert serve.poll() is None, log_path.read_text()
        replies = {}
        for thing in ("pump-1", "unregistered-9"):
            device = fleet.device(thing).wait_connected()
            devices.append(device)
            base = REPORT.format(thing, "json")
            device.subscribe(base + "/accepted", base + "/rejected")
            device.publish(base, wire.encode(wire.build(1000, listening_tcp=[]), "json"))
            [(topic, payload)] = wait_for(device.received, 30, f"the reply to {thing}")
            replies[thing] = (topic.rsplit("/", 1)[1], json.loads(payload))
        assert replies["pump-1"][0] == "accepted" and replies["pump-1"][1]["status"] == "ACCEPTED"
        status, body = replies["unregistered-9"]
        assert status == "rejected" and body["statusDetails"]["ErrorCode"] == "UnregisteredThing"
        # refused before its payload is decoded (cheap checks first): no report id to echo
        assert body["thingName"] == "unregistered-9" and "reportId" not in body
    finally:
        for device in devices:
            device.close()
        serve.terminate()
        serve.wait(20)


def test_serve_with_mqtt_alerts_keeps_one_session_under_the_client_id_lock(fleet, tmp_path):
    from garrison.agent import report as wire
    cert, key = fleet.engine_files
    log_path = tmp_path / "serve.log"
    takeovers_before = fleet.log.read_text().count("already connected")
    with open(log_path, "wb") as log:   # the default configuration: alerts to the log and over MQTT
        serve = subprocess.Popen([PY, "-m", "garrison.detect.cli", "serve", "--broker", f"mqtts://localhost:{fleet.port}",
                                  "--db", str(tmp_path / "engine.db"), "--min-report-interval", "0",
                                  "--ca", str(fleet.ca.cert_path), "--cert", str(cert), "--key", str(key)],
                                 stdout=log, stderr=log)
    device = None
    try:
        wait_for(lambda: "serving:" in log_path.read_text() or serve.poll() is not None, 30, "serve to start")
        device = fleet.device("pump-2").wait_connected()
        base = REPORT.format("pump-2", "json")
        device.subscribe(base + "/accepted")
        device.publish(base, wire.encode(wire.build(5000, listening_tcp=[]), "json"))
        wait_for(device.received, 30, "the reply")
    finally:
        if device:
            device.close()
        serve.terminate()
        serve.wait(20)
    assert fleet.log.read_text().count("already connected") == takeovers_before
    assert "lost the broker" not in log_path.read_text()
