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


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session (tests/scaleout.py); tests get their own schema."""
    from scaleout import PG_BIN, Postgres
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL is not installed (scripts/install.sh installs it)")
    server = Postgres().start()
    yield server
    server.stop()


_schemas = iter(range(1, 1 << 30))


@pytest.fixture
def pg_dsn(postgres_server):
    """A DSN whose tables live in a fresh, empty schema (search_path), like a new database."""
    import psycopg
    name = f"t{next(_schemas)}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"{postgres_server.dsn}?options=-csearch_path%3D{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    """The engine's --db on each backend: a SQLite file, then a PostgreSQL database (same behaviour)."""
    if request.param == "sqlite":
        return str(tmp_path / "engine.db")
    return request.getfixturevalue("pg_dsn")
