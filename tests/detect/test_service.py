"""garrison.detect.service in-process: what `serve` wires together starts, stops on request, and
releases its database lock; a second service on the same database is refused before it connects."""
import threading

import pytest

from garrison.detect.config import Config
from garrison.detect.service import BrokerLink, Service, ServiceError
from tests.fixtures import wait_for


def test_service_runs_stops_and_releases_its_lock(mosquitto, tmp_path):
    db = str(tmp_path / "engine.db")
    service = Service(db, BrokerLink(mosquitto.url), Config(), clock_offset_s=0)
    runner = threading.Thread(target=service.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        wait_for(lambda: service.engine is not None and service.ingest.connected.is_set(), what="service connected")
        with pytest.raises(ServiceError, match="another garrison-detect serve is running"):
            Service(db, BrokerLink(mosquitto.url)).start()
    finally:
        service.stop()
        runner.join(30)
    assert not runner.is_alive()
    second = Service(db, BrokerLink(mosquitto.url)).start()   # the lock went with the first
    assert second.engine.list_things() == []
    second.shutdown()


def test_the_service_checkpoints_on_its_own_thread_not_in_the_ingest_commits(mosquitto, tmp_path):
    from garrison.detect.state.checkpoint import BACKSTOP_PAGES

    def checkpointers():
        return [t for t in threading.enumerate() if t.name == "garrison-checkpoint"]

    service = Service(str(tmp_path / "engine.db"), BrokerLink(mosquitto.url), Config(), clock_offset_s=0).start()
    try:
        assert len(checkpointers()) == 1
        store = service.engine.store
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_PAGES
    finally:
        service.shutdown()
    assert checkpointers() == []
