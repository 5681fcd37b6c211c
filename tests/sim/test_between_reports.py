"""End to end, between the reports: a beacon that is never connected at a snapshot and a listener
open for a moment between two reports, on real namespaced devices with the real agent and the real
engine. With socket events (the agent's default on MQTT) both alarm; the same attacks on a
snapshot-only agent (--socket-events off) raise nothing: the blind spot the events close."""
import pytest

from garrison.sim import netns as sim_netns
from garrison.sim import scenarios
from garrison.sim.live_attacks import BACKDOOR_PORT

pytestmark = pytest.mark.skipif(not sim_netns.supported(), reason="network namespaces need root and iproute2")


def test_beacon_and_short_listener_alarm_with_socket_events_and_are_missed_without(tmp_path):
    matrix = scenarios.run(["beacon", "short-listener"], workdir=tmp_path, timeout=60,
                           blind=["beacon", "short-listener"])
    print("\n" + matrix.table())
    rows = {row.scenario: row for row in matrix.rows}
    assert matrix.baseline_alerts == [] and rows["clean"].behaviors == []

    # with socket events: caught
    beacon, listener = rows["beacon"], rows["short-listener"]
    assert beacon.detected and beacon.behaviors == ["c2-destinations"], beacon
    assert listener.detected and listener.behaviors == ["backdoor-tcp-ports"], listener
    # the beacon alarms in every interval: once raised, its alarm never clears while it beacons
    assert beacon.accepted >= scenarios.BLIND_REPORTS and beacon.cleared == []
    values = {(v["thingName"], v["behavior"]["name"]): v["lastViolationValue"] for v in matrix.violations}
    assert "203.0.113.66" in values[("ns-beacon", "c2-destinations")]["cidrs"]
    assert BACKDOOR_PORT + 1 in values[("ns-short-listener", "backdoor-tcp-ports")]["ports"]

    # the same attacks on snapshot-only agents: several reports accepted, no alarm at all
    for name in ("beacon-blind", "short-listener-blind"):
        row = rows[name]
        assert row.socket_events is False
        assert row.accepted >= scenarios.BLIND_REPORTS, row
        assert not row.detected and row.behaviors == [], row
    assert sorted(matrix.blind_spots()) == ["beacon-blind", "short-listener-blind"]
    assert not any(thing.endswith("-blind") for thing, _ in values)
    assert matrix.ok
