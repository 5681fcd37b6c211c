"""The one reconnect backoff of the three transports: doubling, capped, jittered, reset."""
import random
import threading

import pytest

from garrison.agent.transports.backoff import Backoff


def test_doubles_up_to_the_cap_with_jitter_around_the_nominal_delay():
    backoff = Backoff(1.0, 10.0, rng=random.Random(3))
    nominal, waits = [], []
    for _ in range(7):
        nominal.append(backoff.delay)
        waits.append(backoff.next_wait())
    assert nominal == [1, 2, 4, 8, 10, 10, 10]
    assert all(0.8 * n <= w <= 1.2 * n for n, w in zip(nominal, waits))
    assert len({round(w / n, 6) for n, w in zip(nominal, waits)}) > 1   # jittered, not a fixed factor
    backoff.reset()
    assert backoff.delay == 1


def test_a_fleet_does_not_come_back_in_lockstep():
    firsts = [Backoff(5.0, 60.0).next_wait() for _ in range(50)]
    assert max(firsts) - min(firsts) > 0.5


def test_wait_returns_at_once_when_stopping():
    stopping = threading.Event()
    stopping.set()
    assert Backoff(30.0, 60.0).wait(stopping) is True


def test_refuses_nonsense_bounds():
    with pytest.raises(ValueError):
        Backoff(0, 10)
    with pytest.raises(ValueError):
        Backoff(20, 10)


def test_all_three_transports_use_it():
    from pathlib import Path
    transports = Path(__file__).resolve().parents[2] / "agent" / "transports"
    for name in ("mqtt.py", "awsiot.py", "greengrass.py"):
        text = (transports / name).read_text()
        assert "Backoff(" in text and "* 2" not in text, name
