"""Fixtures for the scale-out deployment: a fresh 3-node NATS cluster and a fresh database per test."""
import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detect"))  # engine_support

from scaleout import NATS_SERVER, NatsCluster  # noqa: E402

_databases = itertools.count(1)


@pytest.fixture
def nats_cluster(tmp_path):
    if not Path(NATS_SERVER).exists():
        pytest.skip("nats-server is not installed (scripts/install.sh installs it)")
    cluster = NatsCluster(partitions=4, root=tmp_path / "nats").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_database(postgres_server):
    """A new, empty database (advisory locks are per database: each test gets its own)."""
    import psycopg
    name = f"scale{next(_databases)}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.dsn.rsplit("/", 1)[0] + "/" + name
