"""`garrison-agent run --once` against a real Mosquitto and a responder that answers like AWS."""
import ssl

import pytest

from agent_helpers import Responder, run_agent
from fixtures import free_port


@pytest.mark.parametrize("fmt,short,version", [("json", False, "3.1.1"), ("cbor", True, "5")])
def test_accepted_report_exits_0(tmp_path, shared_mosquitto, responder, fmt, short, version):
    thing = f"ok-{fmt}-{version.replace('.', '')}"
    result = run_agent("run", "--once", "--thing", thing, "--broker", shared_mosquitto.url, "--format", fmt,
                       "--mqtt-version", version, "--state-dir", str(tmp_path), "--reply-timeout", "20",
                       *(["--short-names"] if short else []))
    assert result.returncode == 0, result.stderr.decode()
    ids = responder.report_ids(thing)
    assert len(ids) == 1
    assert f"report {ids[0]} accepted" in result.stderr.decode()
    assert not list((tmp_path / "spool").iterdir())     # acknowledged reports leave the spool


def test_rejected_report_exits_1_and_logs_the_code(tmp_path, shared_mosquitto, responder):
    result = run_agent("run", "--once", "--thing", "reject-me", "--broker", shared_mosquitto.url,
                       "--state-dir", str(tmp_path), "--reply-timeout", "20")
    assert result.returncode == 1, result.stderr.decode()
    assert "InvalidPayload" in result.stderr.decode()


def test_no_reply_exits_3(tmp_path, shared_mosquitto, responder):
    result = run_agent("run", "--once", "--thing", "silent-one", "--broker", shared_mosquitto.url,
                       "--state-dir", str(tmp_path), "--reply-timeout", "1")
    assert result.returncode == 3, result.stderr.decode()
    assert responder.wait_for("silent-one", 1)        # it was delivered, just not answered


def test_unreachable_broker_exits_3_and_keeps_the_report(tmp_path):
    result = run_agent("run", "--once", "--thing", "lonely", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                       "--state-dir", str(tmp_path), "--reply-timeout", "1")
    assert result.returncode == 3, result.stderr.decode()
    assert len(list((tmp_path / "spool").glob("*.json"))) == 1


def test_mutual_tls(tmp_path, tls_mosquitto, certs):
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(*[str(p) for p in certs.client("responder")])
    responder = Responder(tls_mosquitto.host, tls_mosquitto.port, tls=context)
    try:
        cert, key = certs.client("tls-thing")
        result = run_agent("run", "--once", "--thing", "tls-thing", "--broker", tls_mosquitto.url,
                           "--ca", str(certs.ca), "--cert", str(cert), "--key", str(key),
                           "--state-dir", str(tmp_path), "--reply-timeout", "20")
        assert result.returncode == 0, result.stderr.decode()
        assert len(responder.report_ids("tls-thing")) == 1
    finally:
        responder.close()


def test_tls_without_client_certificate_is_refused(tmp_path, tls_mosquitto, certs):
    result = run_agent("run", "--once", "--thing", "no-cert", "--broker", tls_mosquitto.url,
                       "--ca", str(certs.ca), "--state-dir", str(tmp_path), "--reply-timeout", "2")
    assert result.returncode == 3


def test_password_authentication_from_the_environment(tmp_path):
    import subprocess
    from fixtures import Mosquitto
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "device", "s3cret"], check=True,
                   capture_output=True)
    broker = Mosquitto(tmp_path / "broker", extra_config=f"allow_anonymous false\npassword_file {passwords}").start()
    responder = Responder(broker.host, broker.port, auth=("device", "s3cret"))
    try:
        args = ["run", "--once", "--thing", "authed", "--broker", broker.url, "--username", "device",
                "--state-dir", str(tmp_path / "state"), "--reply-timeout", "20"]
        assert run_agent(*args, env={"GARRISON_PASSWORD": "s3cret"}).returncode == 0
        wrong = run_agent(*args[:-2], "--reply-timeout", "2", env={"GARRISON_PASSWORD": "guess"})
        assert wrong.returncode == 3 and "refused the connection" in wrong.stderr.decode()
        assert "guess" not in wrong.stderr.decode()
    finally:
        responder.close()
        broker.stop()


def test_awsiot_transport_against_a_mutual_tls_broker(tmp_path, tls_mosquitto, certs):
    """The AWS IoT SDK transport speaks plain MQTT over mutual TLS, so Mosquitto stands in for AWS."""
    pytest.importorskip("awsiot")
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(*[str(p) for p in certs.client("responder")])
    responder = Responder(tls_mosquitto.host, tls_mosquitto.port, tls=context)
    try:
        cert, key = certs.client("aws-thing")
        result = run_agent("run", "--once", "--transport", "awsiot", "--thing", "aws-thing", "--format", "cbor",
                           "--broker", f"mqtts://localhost:{tls_mosquitto.port}", "--ca", str(certs.ca),
                           "--cert", str(cert), "--key", str(key), "--state-dir", str(tmp_path),
                           "--reply-timeout", "20")
        assert result.returncode == 0, result.stderr.decode()
        assert len(responder.report_ids("aws-thing")) == 1
    finally:
        responder.close()
