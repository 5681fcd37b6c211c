"""Shared fixtures: real broker, real certificates, real network namespaces."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures import Mosquitto, NetNamespace, make_certs, netns_supported  # noqa: E402

# Real Device Defender payloads (AWS docs, AWS sample agent): protocol data, kept in the repository.
AWS_REPORTS = Path(__file__).resolve().parent / "data" / "aws-reports"
_NETNS = None


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A CA, a localhost server certificate; `certs.client(name)` issues client certificates."""
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mosquitto(tmp_path):
    """A plain-MQTT Mosquitto on a free loopback port, for one test."""
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def shared_mosquitto(tmp_path_factory):
    """One plain-MQTT Mosquitto for a whole test module (faster; use unique thing names)."""
    broker = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    yield broker
    broker.stop()


@pytest.fixture
def tls_mosquitto(tmp_path, certs):
    """Mosquitto with TLS that requires a client certificate (mutual TLS)."""
    broker = Mosquitto(tmp_path / "broker", certs=certs, require_certificate=True).start()
    yield broker
    broker.stop()


@pytest.fixture
def netns():
    """A fresh network namespace with loopback up; skipped where namespaces cannot be made."""
    global _NETNS
    if _NETNS is None:
        _NETNS = netns_supported()
    if not _NETNS:
        pytest.skip("network namespaces need root and iproute2")
    ns = NetNamespace()
    yield ns
    ns.close()


@pytest.fixture(scope="session")
def aws_reports():
    """The directory of real Device Defender payloads (tests/data/aws-reports). Missing is a failure."""
    assert (AWS_REPORTS / "README.md").is_file(), f"{AWS_REPORTS} is missing: the AWS fixtures are part of the tests"
    return AWS_REPORTS
