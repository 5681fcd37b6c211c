"""Issue 10, broker and PKI side: names are never issued twice, the engine's name comes from the
PKI directory, and the generated Mosquitto configuration bounds what a device can make the
broker keep (no retained messages, packet size, queued bytes) on a real Mosquitto 2.0.
"""
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from garrison.detect.ops import brokerconf, pki
from fixtures import free_port, scratch_dir, wait_for_port
from mqtt_clients import Client, wait_for

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")

REPORT = "$aws/things/{}/defender/metrics/{}"
LONG_THING = "L" * 128


def run(*argv, check_rc=0):
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == check_rc, proc.stdout + proc.stderr
    return proc


# ------------------------------------------------------------------------------ names (2)

def test_pki_never_issues_a_name_twice_and_always_reserves_the_engines(tmp_path):
    d = str(tmp_path / "pki")
    run("garrison.detect.ops.pki", "init", "--dir", d)
    run("garrison.detect.ops.pki", "engine", "--dir", d, "--name", "detect-prod")
    assert (tmp_path / "pki" / "engine.name").read_text().strip() == "detect-prod"
    for reserved in ("garrison-detect", "detect-prod"):   # the default name stays reserved
        result = run("garrison.detect.ops.pki", "issue", "--dir", d, "--thing", reserved, check_rc=2)
        assert "reserved for the detect engine" in result.stderr and result.stderr.count("\n") == 1
        assert not (tmp_path / "pki" / "things" / f"{reserved}.crt").exists()
    run("garrison.detect.ops.pki", "issue", "--dir", d, "--thing", "pump-1")
    for path in pki.FleetCA(Path(d)).thing_paths("pump-1"):
        path.unlink()                                      # deleting the files does not free the name
    assert "issued before" in run("garrison.detect.ops.pki", "issue", "--dir", d, "--thing", "pump-1", check_rc=2).stderr
    (tmp_path / "pki" / "engine.crt").unlink()
    (tmp_path / "pki" / "engine.key").unlink()
    result = run("garrison.detect.ops.pki", "engine", "--dir", d, "--name", "pump-1", check_rc=2)
    assert "identity of its own" in result.stderr
    run("garrison.detect.ops.pki", "engine", "--dir", d, "--name", "detect-prod")   # re-issuing the engine's own name is fine
    index = (tmp_path / "pki" / "issued-names").read_text().splitlines()
    assert index == ["engine detect-prod", "thing pump-1", "engine detect-prod"]
    assert (tmp_path / "pki" / "issued-names").stat().st_mode & 0o777 == 0o600


def test_pki_counts_certificates_issued_before_the_index_existed(tmp_path):
    ca = pki.FleetCA(tmp_path / "pki")
    ca.init()
    ca.issue_thing("old-1")
    (ca.dir / "issued-names").unlink()                     # a directory from an older version
    with pytest.raises(pki.PkiError, match="identity of its own"):
        ca.issue_engine("old-1")


def test_broker_config_takes_the_engine_identity_from_the_pki_directory(tmp_path):
    d = tmp_path / "pki"
    run("garrison.detect.ops.pki", "init", "--dir", str(d))
    run("garrison.detect.ops.pki", "server", "--dir", str(d), "--host", "localhost")
    run("garrison.detect.ops.pki", "engine", "--dir", str(d), "--name", "detect-prod")
    files = ["--ca", str(d / "ca.crt"), "--cert", str(d / "server.crt"), "--key", str(d / "server.key")]
    run("garrison.detect.ops.brokerconf", "--dir", str(tmp_path / "b1"), *files)
    acl = (tmp_path / "b1" / "acl").read_text().splitlines()
    assert "user detect-prod" in acl and "user garrison-detect" not in acl
    result = run("garrison.detect.ops.brokerconf", "--dir", str(tmp_path / "b2"), *files, "--engine-identity", "garrison-detect",
                 check_rc=2)
    assert "differs from the engine identity detect-prod" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "b2" / "acl").exists()
    run("garrison.detect.ops.brokerconf", "--dir", str(tmp_path / "b3"), *files, "--engine-identity", "detect-prod")


# ------------------------------------------------------------------------ PKI modes (11)

def test_an_existing_pki_directory_is_made_private(tmp_path):
    d = tmp_path / "pki"
    (d / "things").mkdir(parents=True)
    os.chmod(d, 0o777)
    os.chmod(d / "things", 0o777)
    old = os.umask(0)
    try:
        run("garrison.detect.ops.pki", "init", "--dir", str(d))
        run("garrison.detect.ops.pki", "issue", "--dir", str(d), "--thing", "pump-1")
    finally:
        os.umask(old)
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "things").stat().st_mode & 0o777 == 0o700
    for key in (d / "ca.key", d / "things" / "pump-1.key"):
        assert key.stat().st_mode & 0o777 == 0o600


# -------------------------------------------------------------- the broker's limits (1, 3)

class Broker:
    """Mosquitto on the configuration broker-config writes (run as root when we are root, so it
    can read pytest's private temp files)."""

    def __init__(self, workdir: Path, **options):
        self.ca = pki.FleetCA(workdir / "pki")
        self.ca.init()
        self.ca.issue_server(["localhost", "127.0.0.1"])
        self.engine_files = self.ca.issue_engine()
        for thing in ("pump-1", "pump-2", LONG_THING):
            self.ca.issue_thing(thing)
        self.port = free_port()
        self.conf, _ = brokerconf.write(workdir / "broker", self.ca.cert_path, self.ca.dir / "server.crt",
                                        self.ca.dir / "server.key", port=self.port, bind="127.0.0.1",
                                        run_as="root" if os.geteuid() == 0 else None, **options)
        self.log = workdir / "mosquitto.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=out, stderr=out)
        wait_for_port("127.0.0.1", self.port)

    def client(self, cert_key, **kwargs) -> Client:
        cert, key = cert_key
        return Client("127.0.0.1", self.port, str(self.ca.cert_path), str(cert), str(key), **kwargs)

    def device(self, thing, **kwargs) -> Client:
        return self.client(self.ca.thing_paths(thing), **kwargs)

    def engine(self, **kwargs) -> Client:
        return self.client(self.engine_files, **kwargs)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    # a small byte bound, so that the test can exceed it quickly; the default is checked below
    broker = Broker(tmp_path_factory.mktemp("hardened"), max_queued_bytes=1024 * 1024)
    yield broker
    broker.stop()


def test_the_generated_config_sets_the_memory_bounds(tmp_path):
    ca = pki.FleetCA(tmp_path / "pki")
    ca.init()
    cert, key = ca.issue_server(["localhost"])
    conf, _ = brokerconf.write(tmp_path / "out", ca.cert_path, cert, key)
    lines = conf.read_text().splitlines()
    assert "retain_available false" in lines
    assert f"max_packet_size {128 * 1024 + 1024}" in lines
    assert f"max_queued_bytes {256 * 1024 * 1024}" in lines and "max_queued_messages 100000" in lines
    run("garrison.detect.ops.brokerconf", "--dir", str(tmp_path / "small"), "--ca", str(ca.cert_path), "--cert", str(cert),
        "--key", str(key), "--max-queued-bytes", "1048576")
    assert "max_queued_bytes 1048576" in (tmp_path / "small" / "mosquitto.conf").read_text().splitlines()


def test_a_retained_report_is_refused_and_never_replayed_to_a_new_subscriber(broker):
    device = broker.device("pump-1").wait_connected()
    device.client.publish(REPORT.format("pump-1", "json"), b"retained-report", qos=1, retain=True)
    assert device.refused(), "the broker kept a client that publishes a retained message"
    engine = broker.engine(client_id="garrison-detect").wait_connected()
    other = broker.device("pump-2").wait_connected()
    try:
        engine.subscribe("$aws/things/+/defender/metrics/+")
        other.publish(REPORT.format("pump-2", "json"), b"marker")
        wait_for(lambda: engine.received(REPORT.format("pump-2", "json")), what="the marker")
        assert [p for _, p in engine.received()] == [b"marker"]
    finally:
        for client in (engine, other, device):
            client.close()


def test_a_packet_above_a_report_plus_headers_is_refused(broker):
    engine = broker.engine(client_id="garrison-detect").wait_connected()
    big = broker.device("pump-1").wait_connected()
    longest = broker.device(LONG_THING).wait_connected()
    try:
        engine.subscribe("$aws/things/+/defender/metrics/+")
        big.client.publish(REPORT.format("pump-1", "json"), b"x" * (200 * 1024), qos=1)
        assert big.refused(), "a 200 KB publish did not cost the client its connection"
        full = b"r" * (128 * 1024)   # the largest report, on the longest report topic, still passes
        longest.publish(REPORT.format(LONG_THING, "cbor"), full)
        wait_for(lambda: engine.received(REPORT.format(LONG_THING, "cbor")), what="the 128 KB report")
        assert engine.received() == [(REPORT.format(LONG_THING, "cbor"), full)]
    finally:
        for client in (engine, big, longest):
            client.close()


def test_the_engines_offline_queue_is_bounded_in_bytes(broker):
    # The engine's persistent session subscribes, goes away, and a device floods it: Mosquitto
    # keeps max_inflight_messages (100) plus max_queued_bytes (1 MiB here), and drops the rest.
    engine = broker.engine(client_id="garrison-detect", clean_session=False).wait_connected()
    engine.subscribe("$aws/things/+/defender/metrics/+")
    engine.close()
    size, count = 20 * 1024, 300
    device = broker.device("pump-1").wait_connected()
    try:
        for i in range(count):
            device.publish(REPORT.format("pump-1", "json"), i.to_bytes(4, "big") + b"x" * (size - 4))
    finally:
        device.close()
    engine = broker.engine(client_id="garrison-detect", clean_session=False).wait_connected()
    try:
        # the lower bound first: on a busy machine the delivery can stall for a second early on,
        # which the stillness check below alone would take for the end of the queue
        wait_for(lambda: len(engine.received()) >= 50, what="the queue to start draining")
        got = []
        wait_for(lambda: (got.append(len(engine.received())) or len(got) > 20 and got[-1] == got[-21]),
                 what="the queue to drain")
        received = engine.received()
        assert 50 <= len(received) < count
        assert len(received) * size <= 100 * size + 1024 * 1024 + 2 * size
    finally:
        engine.close()


# ------------------------------------------------- the documented recipe, as Debian runs it (11)

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: Mosquitto starts as root and drops to its user")
def test_the_broker_recipe_works_when_mosquitto_drops_root_to_its_own_user():
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    base = scratch_dir("garrison-dropped-")
    try:
        os.chmod(base, 0o755)      # as /etc/mosquitto is; the PKI directory inside is 0700
        ca = pki.FleetCA(base / "pki")
        ca.init()
        ca.issue_server(["localhost", "127.0.0.1"])
        ca.issue_thing("pump-1")
        assert ca.dir.stat().st_mode & 0o777 == 0o700
        port = free_port()
        conf, _ = brokerconf.write(base / "broker", ca.cert_path, ca.dir / "server.crt", ca.dir / "server.key",
                                   port=port, bind="127.0.0.1")   # no `user root`: mosquitto drops to mosquitto
        key_copy = base / "broker" / "server.key"
        assert key_copy.stat().st_mode & 0o777 == 0o640
        assert key_copy.stat().st_gid == pwd.getpwnam("mosquitto").pw_gid
        log = base / "mosquitto.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    wait_for_port("127.0.0.1", port, timeout=0.5)
                    break
                except TimeoutError:
                    pass
            assert proc.poll() is None, log.read_text()
            cert, key = ca.thing_paths("pump-1")
            device = Client("127.0.0.1", port, str(ca.cert_path), str(cert), str(key)).wait_connected()
            device.close()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(base, ignore_errors=True)
