"""GET /metrics scraped by a real Prometheus (Debian's `prometheus`) on loopback, queried through
its HTTP API: reports accepted / rejected by code, violations raised by profile and behavior,
things by state. The scrape carries the API token as Prometheus' bearer credentials."""
import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from garrison.detect.api.server import ApiServer
from garrison.detect.console.prometheus import watch_ingest
from garrison.detect.engine import Engine
from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.state.store import Store

from engine_support import behavior, build, profile
from fixtures import free_port, wait_for

PROMETHEUS = shutil.which("prometheus")
TOKEN = "scrape-token"
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (scripts/install.sh dev)")


def _query(port: int, expr: str):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]
    except OSError:
        return None


def test_a_real_prometheus_scrapes_the_engine(tmp_path):
    engine = Engine(Store(tmp_path / "engine.db"))
    engine.apply_profile(profile("Cams", behavior("ports", "aws:listening-tcp-ports", "in-port-set", {"ports": [22]})),
                         attach="all")
    ingestor = Ingestor(engine, min_interval_s=0)
    watch_ingest(engine, ingestor)
    topic = "$aws/things/{}/defender/metrics/json"
    assert ingestor.handle(topic.format("cam-1"), json.dumps(build(tcp_ports=[22, 4444])).encode()).accepted
    assert not ingestor.handle(topic.format("cam-2"), b"{not json").accepted
    server = ApiServer(engine, TOKEN, "127.0.0.1", 0).start()
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: garrison
    authorization: {{credentials: {TOKEN}}}
    static_configs: [{{targets: ["127.0.0.1:{server.port}"]}}]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=log)
    try:
        wait_for(lambda: _query(port, "up") and _query(port, "up")[0]["value"][1] == "1", 30,
                 "Prometheus to scrape the engine")
        accepted = _query(port, 'garrison_reports_total{outcome="accepted"}')
        assert float(accepted[0]["value"][1]) == 1
        rejected = _query(port, 'garrison_reports_total{outcome="rejected"}')
        assert [(r["metric"]["code"], float(r["value"][1])) for r in rejected] == [("InvalidPayload", 1.0)]
        raised = _query(port, 'garrison_violation_events_total{event="raised"}')
        assert [(r["metric"]["profile"], r["metric"]["behavior"], float(r["value"][1])) for r in raised] == \
            [("Cams", "ports", 1.0)]
        assert float(_query(port, 'garrison_things{state="alarm"}')[0]["value"][1]) == 1
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        server.stop()
        engine.store.close()
