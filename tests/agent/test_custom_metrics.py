"""A firmware author's custom metrics, checked on the device by the wire contract's rules and
sent to the REAL engine (Ingestor + Engine + SQLite over a real Mosquitto): a bad name is refused
when it is added; a bad value costs only its own metric, and the report carrying its siblings is
accepted and judged."""
import logging

import pytest

from garrison.agent.api import Agent
from garrison.agent.custom import CustomMetricReader
from garrison.agent.daemon import Daemon
from garrison.detect.engine import Engine
from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.ingest.mqtt import MqttIngest
from garrison.detect.state.store import Store
from garrison.wire import names

GREENHOUSE = {"securityProfileName": "Greenhouse", "behaviors": [
    {"name": "CoolEnough", "metric": "temperature_c",
     "criteria": {"comparisonOperator": "less-than", "value": {"number": 20}}},
    {"name": "KnownFirmware", "metric": "firmware_version",
     "criteria": {"comparisonOperator": "in-set", "value": {"strings": ["2.4.1"]}}},
]}


class Recorded:
    """The real engine as the ingestor's sink, keeping each accepted report for the test to read."""

    def __init__(self, engine):
        self.engine, self.reports = engine, []

    def last_report(self, thing):
        return self.engine.last_report(thing)

    def is_registered(self, thing):
        return self.engine.is_registered(thing)

    def accept(self, thing, report_long, received_ms):
        result = self.engine.accept(thing, report_long, received_ms)
        self.reports.append((thing, report_long))
        return result


@pytest.fixture
def engine(tmp_path, shared_mosquitto):
    real = Engine(Store(tmp_path / "engine.db"))
    real.apply_profile(GREENHOUSE, attach="all")
    sink = Recorded(real)
    ingest = MqttIngest(shared_mosquitto.url, Ingestor(sink, min_interval_s=0),
                        client_id=f"engine-custom-{id(sink)}").start()
    assert ingest.connected.wait(10)
    yield sink
    ingest.stop()
    real.store.close()


@pytest.mark.parametrize("name, rule", [
    ("pump pressure", "1-128 characters of [a-zA-Z0-9:_-]"),
    ("p" * 129, "1-128 characters of [a-zA-Z0-9:_-]"),
    ("", "1-128 characters"),
    ("aws:cpu", 'must not start with "aws:"'),
])
def test_a_bad_name_is_refused_when_it_is_added(tmp_path, name, rule):
    agent = Agent(thing="firmware-names", state_dir=str(tmp_path))
    with pytest.raises(ValueError) as err:
        agent.add_custom_metric(name, lambda: 1)
    assert isinstance(err.value, names.InvalidName) and rule in str(err.value)
    assert "custom metric name" in str(err.value)
    assert agent.daemon.custom_metrics == {}
    with pytest.raises(names.InvalidName):                # the daemon's own constructor too
        Daemon(agent.daemon.config, custom_metrics={name: lambda: 1})
    agent.add_custom_metric("p" * 128, lambda: 1)      # the longest name the engine takes


BAD = {
    "pressures_kpa": lambda: [21.0, float("nan")],                  # NaN in a number_list
    "flow": lambda: float("inf"),
    "peers": lambda: {"ip_list": ["192.0.2.1", "not-an-address"]},
    "banner": lambda: ["x" * 1025],                                 # a string over 1,024 characters
    "uptime_ns": lambda: 2**63,                                     # an integer past 2^63-1
    "broken_sensor": lambda: 1 / 0,                                 # the firmware's own bug
}


def test_bad_values_cost_only_their_own_metric_at_the_real_engine(tmp_path, shared_mosquitto, engine, caplog):
    caplog.set_level(logging.INFO, logger="garrison.agent.custom")
    thing = "greenhouse-7"
    with Agent(thing=thing, broker=shared_mosquitto.url, state_dir=str(tmp_path), collectors=["listening_tcp"]) as agent:
        agent.add_custom_metric("temperature_c", lambda: 21.5)
        agent.add_custom_metric("firmware_version", lambda: ["2.4.1"])
        for name, callback in BAD.items():
            agent.add_custom_metric(name, callback)
        replies = [agent.publish_once(timeout=20) for _ in range(2)]   # two cycles

    assert [(r.accepted, r.error_code) for r in replies] == [(True, None), (True, None)], replies
    assert [t for t, _ in engine.reports] == [thing, thing]
    for _, report in engine.reports:
        assert report["custom_metrics"] == {"temperature_c": [{"number": 21.5}],
                                            "firmware_version": [{"string_list": ["2.4.1"]}]}
        assert "listening_tcp_ports" in report["metrics"]
    # the engine judged the siblings: 21.5 is not less than 20
    assert [v["behavior"]["name"] for v in engine.engine.active_violations(thing)] == ["CoolEnough"]
    # each bad metric said once, naming its rule, not once per cycle
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(m.split()[2] for m in warned) == sorted(BAD), warned
    said = {m.split()[2]: m for m in warned}
    assert "custom numbers are finite" in said["pressures_kpa"] and "custom numbers are finite" in said["uptime_ns"]
    assert "IPv4 or IPv6" in said["peers"] and "at most 1024 characters" in said["banner"]
    assert "ZeroDivisionError" in said["broken_sensor"]


def test_a_metric_is_logged_again_only_after_it_recovered(caplog):
    caplog.set_level(logging.DEBUG, logger="garrison.agent.custom")
    value = {"v": float("nan")}
    reader = CustomMetricReader()
    callbacks = {"level": lambda: value["v"], "steady": lambda: 3}

    def warnings():
        return [r for r in caplog.records if r.levelno == logging.WARNING]

    assert reader.read(callbacks) == {"steady": {"number": 3}}
    assert reader.read(callbacks) == {"steady": {"number": 3}}
    assert len(warnings()) == 1 and reader.failing.keys() == {"level"}
    value["v"] = 7
    assert reader.read(callbacks) == {"level": {"number": 7}, "steady": {"number": 3}}
    assert reader.failing == {} and any("valid again" in r.getMessage() for r in caplog.records)
    value["v"] = float("inf")
    assert reader.read(callbacks) == {"steady": {"number": 3}}
    assert len(warnings()) == 2
    # a name slipped past add_custom_metric (a direct dict edit) costs only itself too
    assert reader.read({"bad name": lambda: 1, "steady": lambda: 3}) == {"steady": {"number": 3}}
    assert "1-128 characters" in warnings()[-1].getMessage()
