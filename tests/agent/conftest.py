"""Agent test fixtures."""
import pytest

from agent_helpers import Responder


@pytest.fixture
def responder(shared_mosquitto):
    r = Responder(shared_mosquitto.host, shared_mosquitto.port)
    yield r
    r.close()
