"""packaging/monitoring: the alert rules pass `promtool check rules`, and every metric the rules
and the Grafana dashboard query is one that GET /metrics exports."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry

from garrison.detect.console.prometheus import EngineCollector
from garrison.detect.engine import Engine
from garrison.detect.state.store import Store

HERE = Path(__file__).resolve().parents[2] / "packaging" / "monitoring"


def _exported(tmp_path) -> set:
    engine = Engine(Store(tmp_path / "m.db"))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, 900, lambda: ["quarantine"]))
    text = generate_latest(registry).decode()
    engine.store.close()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)", text, re.M):
        if kind == "counter":
            names.add(name if name.endswith("_total") else name + "_total")
        elif kind == "summary":
            names |= {name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def _queried(text: str) -> set:
    return {name for name in re.findall(r"\b(garrison_\w+)", text)}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_the_alert_rules_load_in_prometheus():
    check = subprocess.run(["promtool", "check", "rules", str(HERE / "garrison-alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 8 rules found" in check.stdout, check.stdout + check.stderr


def test_rules_and_dashboard_query_only_exported_metrics(tmp_path):
    exported = _exported(tmp_path)
    dashboard = json.loads((HERE / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    queried = _queried(exprs) | _queried((HERE / "garrison-alerts.yml").read_text())
    assert queried and queried <= exported, queried - exported
