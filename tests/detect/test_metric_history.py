"""Metric history: ListMetricValues over what a thing reported (behavior metrics plus
additionalMetricsToRetainV2), paging, retention, the CLI and API, and exportMetric batches in
AWS's metrics-export shape published to a real Mosquitto."""
import json
import subprocess
import sys
import threading

import pytest

from garrison.agent.transports.paho_compat import new_client
from garrison.detect.clock import ManualClock
from garrison.detect.config import Config
from garrison.detect.engine import Engine
from garrison.detect.state.store import Store, StoreError

from api_support import served
from engine_support import Collect, behavior, profile, validated
from fixtures import wait_for

DAY_MS = 86400 * 1000


def history_profile(export_topic=None):
    doc = profile("History",
                  dict(behavior("out", "aws:all-bytes-out", "less-than", {"count": 10**9}), exportMetric=True),
                  behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22, 443]}))
    doc["additionalMetricsToRetainV2"] = [{"metric": "aws:num-established-tcp-connections"},
                                         {"metric": "temperature", "exportMetric": True}]
    if export_topic:
        doc["metricsExportConfig"] = {"mqttTopic": export_topic, "roleArn": "arn:aws:iam::123456789012:role/x"}
    return doc


@pytest.fixture
def setup(tmp_path):
    clock = ManualClock()
    engine = Engine(Store(tmp_path / "e.db"), clock, Config(), alerts=Collect())
    engine.apply_profile(history_profile(), attach="all")
    return engine, clock, tmp_path / "e.db"


def report(engine, clock, i):
    engine.accept("dev1", validated(tcp_ports=[22], connections=i, udp_ports=[53],
                                    network_stats={"bytes_in": 1, "bytes_out": 100 * i, "packets_in": 1,
                                                   "packets_out": 1},
                                    custom={"temperature": 20 + i}, report_id=i), clock.now_ms())
    clock.advance(300)


def test_list_metric_values_keeps_behavior_and_additional_metrics(setup):
    engine, clock, _ = setup
    start = clock.now()
    for i in range(1, 6):
        report(engine, clock, i)
    page = engine.list_metric_values("dev1", "aws:all-bytes-out")
    assert [d["value"] for d in page["metricDatumList"]] == [{"count": 100 * i} for i in range(1, 6)]
    assert [d["timestamp"] for d in page["metricDatumList"]] == [start + 300 * i for i in range(5)]
    assert engine.list_metric_values("dev1", "aws:listening-tcp-ports")["metricDatumList"][0]["value"] == {"ports": [22]}
    assert [d["value"] for d in engine.list_metric_values("dev1", "temperature")["metricDatumList"]] == \
        [{"number": 20 + i} for i in range(1, 6)]
    assert len(engine.list_metric_values("dev1", "aws:num-established-tcp-connections")["metricDatumList"]) == 5
    # a metric nothing retains is not kept
    assert engine.list_metric_values("dev1", "aws:listening-udp-ports")["metricDatumList"] == []
    # time range and paging
    window = engine.list_metric_values("dev1", "aws:all-bytes-out", start + 300, start + 900)
    assert [d["value"]["count"] for d in window["metricDatumList"]] == [200, 300, 400]
    first = engine.list_metric_values("dev1", "aws:all-bytes-out", max_results=2)
    second = engine.list_metric_values("dev1", "aws:all-bytes-out", max_results=2, next_token=first["nextToken"])
    third = engine.list_metric_values("dev1", "aws:all-bytes-out", max_results=2, next_token=second["nextToken"])
    assert [d["value"]["count"] for p in (first, second, third) for d in p["metricDatumList"]] == [100, 200, 300, 400, 500]
    assert "nextToken" not in third
    with pytest.raises(StoreError):
        engine.list_metric_values("dev1", "aws:all-bytes-out", next_token="garbage")
    with pytest.raises(StoreError):
        engine.list_metric_values("nobody", "aws:all-bytes-out")


def test_retention_drops_old_values(tmp_path):
    clock = ManualClock()
    engine = Engine(Store(tmp_path / "e.db"), clock, Config(metric_retention_s=2 * 86400), alerts=Collect())
    engine.apply_profile(history_profile(), attach="all")
    report(engine, clock, 1)
    clock.advance(86400)
    report(engine, clock, 2)
    clock.advance(86400 + 600)   # the first is now older than two days, the second is not
    engine.sweep()
    assert [d["value"]["count"] for d in engine.list_metric_values("dev1", "aws:all-bytes-out")["metricDatumList"]] == [200]


def test_cli_and_api_serve_list_metric_values(setup):
    engine, clock, db = setup
    for i in range(1, 4):
        report(engine, clock, i)
    out = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "metrics", "values", "--db", str(db),
                          "--thing", "dev1", "--metric", "aws:all-bytes-out", "--json", "--max-results", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    page = json.loads(out.stdout)
    assert [d["value"] for d in page["metricDatumList"]] == [{"count": 100}, {"count": 200}] and page["nextToken"]
    text = subprocess.run([sys.executable, "-m", "garrison.detect.cli", "metrics", "values", "--db", str(db),
                           "--thing", "dev1", "--metric", "temperature"], capture_output=True, text=True)
    assert text.returncode == 0 and '{"number":23}' in text.stdout, text.stdout + text.stderr
    with served(engine) as api:
        status, body = api("GET", "/metric-values", thingName="dev1", metricName="aws:all-bytes-out", maxResults=2,
                           nextToken=page["nextToken"])
        assert status == 200 and body["metricDatumList"] == \
            [{"timestamp": page["metricDatumList"][1]["timestamp"] + 300, "value": {"count": 300}}]
        assert api("GET", "/metric-values", thingName="nobody", metricName="aws:all-bytes-out")[0] == 404
        assert api("GET", "/metric-values", thingName="dev1", metricName="x", nextToken="bad")[0] == 400


def test_export_metric_publishes_aws_shaped_batches(tmp_path, mosquitto):
    clock = ManualClock()
    engine = Engine(Store(tmp_path / "e.db"), clock, Config(), alerts=Collect())
    engine.apply_profile(history_profile(export_topic="garrison/metrics/history"), attach="all")
    got, ready = [], threading.Event()
    sub = new_client("export-reader")
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.on_subscribe = lambda *a: ready.set()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    sub.subscribe("garrison/metrics/#", qos=1)
    assert ready.wait(10)
    pub = new_client("engine-export")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    engine.metric_exporter = lambda topic, payload: pub.publish(topic, payload, qos=1)
    for i in range(1, 4):
        report(engine, clock, i)
    engine.tick()
    wait_for(lambda: got, what="the export batch")
    [batch] = got
    assert batch["version"] == "1.0"
    by_name = {}
    for entry in batch["metrics"]:
        assert entry["thing"] == "dev1" and entry["version"] == 1 and isinstance(entry["timestamp"], int)
        by_name.setdefault(entry["name"], []).append(entry["value"])
    # exportMetric on the behavior and the additional metric; not on the others
    assert by_name == {"aws:all-bytes-out": [{"count": 100}, {"count": 200}, {"count": 300}],
                       "temperature": [{"number": 21}, {"number": 22}, {"number": 23}]}
    for client in (sub, pub):
        client.disconnect()
        client.loop_stop()
