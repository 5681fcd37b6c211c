"""The engine never prints its broker password, and takes it from a file or the environment
(issue 10, item 8): the real `garrison-detect serve` on a real Mosquitto with password auth."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from garrison.agent.transports.paho_compat import parse_broker_url, redact_broker_url
from fixtures import Mosquitto, wait_for

CLI = [shutil.which("garrison-detect")] if shutil.which("garrison-detect") else [sys.executable, "-m", "garrison.detect.cli"]
SECRET = "S3cret-pw_42"

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")


@pytest.fixture
def password_broker(tmp_path):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "engine", SECRET], check=True,
                   capture_output=True)
    os.chmod(passwords, 0o600)
    broker = Mosquitto(tmp_path / "broker", extra_config=f"password_file {passwords}").start()
    yield broker
    broker.stop()


class Serve:
    def __init__(self, tmp_path, broker_url, *extra, env=None):
        self.log = tmp_path / f"serve-{len(list(tmp_path.glob('serve-*')))}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(CLI + ["--log-level", "DEBUG", "serve", "--broker", broker_url, "--db",
                                                str(tmp_path / "engine.db"), *extra],
                                         stdout=out, stderr=out, env={**os.environ, **(env or {})})

    def text(self):
        return self.log.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        return self.text()


def test_serve_never_logs_the_password_in_the_broker_url(password_broker, tmp_path):
    url = f"mqtt://engine:{SECRET}@{password_broker.host}:{password_broker.port}"
    serve = Serve(tmp_path, url)
    try:
        wait_for(lambda: "connected to" in serve.text() and "serving:" in serve.text(), 30, "serve to connect")
    finally:
        log = serve.stop()
    assert SECRET not in log
    assert f"mqtt://engine:***@{password_broker.host}:{password_broker.port}" in log
    assert "use --broker-password-file" in log   # and it says where the password should go


@pytest.mark.parametrize("how", ["file", "environment"])
def test_serve_takes_the_broker_password_from_a_file_or_the_environment(password_broker, tmp_path, how):
    url = f"mqtt://engine@{password_broker.host}:{password_broker.port}"
    pw_file = tmp_path / "broker.pass"
    pw_file.write_text(SECRET + "\n")
    extra, env = (["--broker-password-file", str(pw_file)], None) if how == "file" else \
        ([], {"GARRISON_BROKER_PASSWORD": SECRET})
    serve = Serve(tmp_path, url, *extra, env=env)
    try:
        wait_for(lambda: "connected to" in serve.text() or serve.proc.poll() is not None, 30, "serve to connect")
    finally:
        log = serve.stop()
    assert "listening for Device Defender reports" in log and SECRET not in log


def test_serve_with_a_wrong_password_file_is_refused_by_the_broker(password_broker, tmp_path):
    pw_file = tmp_path / "broker.pass"
    pw_file.write_text("wrong-one\n")
    serve = Serve(tmp_path, f"mqtt://{password_broker.host}:{password_broker.port}", "--broker-user", "engine",
                  "--broker-password-file", str(pw_file))
    try:
        wait_for(lambda: "refused the connection" in serve.text() or serve.proc.poll() is not None, 30,
                 "the broker's refusal")
    finally:
        log = serve.stop()
    assert "refused the connection" in log and "wrong-one" not in log and "listening for Device" not in log


@pytest.mark.parametrize("url, shown", [
    ("mqtt://engine:S3cret@host:1883", "mqtt://engine:***@host:1883"),
    ("mqtts://u:p%40ss@h", "mqtts://u:***@h"),
    ("mqtt://u:S3cret/x@h:1", "mqtt://u:***@h:1"),            # a '/' in the password: not a URL path
    ("mqtt://u:a@b@h:1", "mqtt://u:***@h:1"),                  # an '@' in the password
    ("mqtt://user@h:1", "mqtt://user@h:1"),
    ("mqtt://h:1", "mqtt://h:1"),
    ("u:S3cret@h", "u:***@h"),
])
def test_redact_broker_url(url, shown):
    assert redact_broker_url(url) == shown


@pytest.mark.parametrize("url", ["mqtt://u:S3cret/x@h:1", "mqtt://u:S3cret@h:99999", "http://u:S3cret@h",
                                 "mqtt://u:S3cret@h/path"])
def test_a_bad_broker_url_error_never_quotes_the_password(url):
    with pytest.raises(ValueError) as info:
        parse_broker_url(url)
    assert "S3cret" not in str(info.value) and "***" in str(info.value)


def test_serve_refuses_a_password_without_a_user(tmp_path):
    pw_file = tmp_path / "broker.pass"
    pw_file.write_text(SECRET)
    proc = subprocess.run(CLI + ["serve", "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "e.db"),
                                 "--broker-password-file", str(pw_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs a user name" in proc.stderr and SECRET not in proc.stderr
