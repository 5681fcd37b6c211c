"""End to end: real attacks from network namespaces, the real agent, the real engine, the fleet profile."""
import subprocess

import pytest

from garrison.sim import netns as sim_netns
from garrison.sim import scenarios
from garrison.sim.live_attacks import DEFAULT_SCENARIOS, LIVE_ATTACKS

pytestmark = pytest.mark.skipif(not sim_netns.supported(), reason="network namespaces need root and iproute2")


def _namespaces():
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_every_scenario_is_detected_and_the_clean_device_raises_nothing(tmp_path):
    before = _namespaces()
    matrix = scenarios.run(workdir=tmp_path, timeout=90)
    print("\n" + matrix.table())
    rows = {row.scenario: row for row in matrix.rows}
    assert set(rows) == set(DEFAULT_SCENARIOS) | {"clean"}
    assert "silent" in DEFAULT_SCENARIOS                          # a device that goes silent is caught too
    assert matrix.baseline_alerts == []                          # a clean run raises nothing
    for name in DEFAULT_SCENARIOS:
        attack, row = LIVE_ATTACKS[name], rows[name]
        assert row.detected, f"{name} raised no alarm"
        assert set(attack.expected) <= set(row.behaviors), (name, row.behaviors)
        assert row.reports >= (0 if attack.silences else 1) and row.seconds > 0
    assert rows["clean"].detected is False and rows["clean"].behaviors == []
    assert matrix.ok

    # the engine's own record agrees: each attacked thing has its expected violation, the control none
    # (a transient attack's alarm has cleared by the end: the engine records it, inactive)
    active = {(v["thingName"], v["behavior"]["name"]) for v in matrix.violations
              if v.get("active", True) or getattr(LIVE_ATTACKS.get(v["thingName"][3:]), "transient", False)}
    for name in DEFAULT_SCENARIOS:
        assert {(f"ns-{name}", b) for b in LIVE_ATTACKS[name].expected} <= active
    assert not any(thing == "ns-clean" for thing, _ in active)
    values = {(v["thingName"], v["behavior"]["name"]): v["lastViolationValue"] for v in matrix.violations}
    assert values[("ns-backdoor", "backdoor-tcp-ports")]["ports"] == [4444]
    assert values[("ns-scan", "scan-connections")]["count"] >= 120
    assert values[("ns-ddos", "ddos-bytes-out")]["count"] >= 500_000_000
    # silent-device allows 10 units without a report; the run counts them in seconds (ENGINE_CONFIG)
    assert values[("ns-silent", "silent-device")]["count"] >= 11

    assert _namespaces() <= before                                # everything torn down


def test_namespaces_are_removed_when_setup_fails(tmp_path):
    before = _namespaces()
    bad = tmp_path / "bad-profile.json"
    bad.write_text('{"securityProfileName": "x", "behaviors": [{"name": "b", "metric": "aws:nope"}]}')
    run = scenarios.Run(["backdoor"], tmp_path, profile=bad)
    with pytest.raises(RuntimeError, match="profiles apply"):
        try:
            run.setup()
        finally:
            run.close()
    assert _namespaces() <= before
    assert run.procs and all(proc.poll() is not None for proc in run.procs.values())   # its broker is gone


def test_scenarios_cli_rejects_unknown_scenarios():
    from garrison.sim.cli import main
    assert main(["scenarios", "--only", "meteor"]) == 2
