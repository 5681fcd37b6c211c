"""Network deltas: persisted across processes, zero on a fresh state, never negative, no spike on reset."""
import json
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from garrison.agent.deltas import NetworkDeltas
from garrison.collectors.base import InterfaceCounters

ZERO = {"bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0}


def counters(**interfaces):
    return {name: InterfaceCounters(name, *values) for name, values in interfaces.items()}


def test_first_report_is_zero_then_deltas(tmp_path):
    deltas = NetworkDeltas(tmp_path, boot_id="boot-1")
    assert deltas.update(counters(eth0=(1000, 500, 10, 5))) == ZERO
    assert deltas.update(counters(eth0=(1600, 700, 16, 7), wlan0=(99, 99, 9, 9))) == \
        {"bytes_in": 600, "bytes_out": 200, "packets_in": 6, "packets_out": 2}   # wlan0 new: 0
    assert deltas.update(counters(eth0=(1600, 700, 16, 7), wlan0=(100, 109, 10, 11))) == \
        {"bytes_in": 1, "bytes_out": 10, "packets_in": 1, "packets_out": 2}


def test_counter_reset_gives_no_spike_and_rebaselines(tmp_path):
    deltas = NetworkDeltas(tmp_path, boot_id="b")
    deltas.update(counters(eth0=(10**9, 10**9, 10**6, 10**6), wlan0=(100, 100, 1, 1)))
    # eth0 went backwards (re-created or wrapped): contributes 0; wlan0 still counts
    assert deltas.update(counters(eth0=(50, 60, 1, 1), wlan0=(150, 170, 2, 3))) == \
        {"bytes_in": 50, "bytes_out": 70, "packets_in": 1, "packets_out": 2}
    assert deltas.update(counters(eth0=(80, 60, 2, 1), wlan0=(150, 170, 2, 3))) == \
        {"bytes_in": 30, "bytes_out": 0, "packets_in": 1, "packets_out": 0}


def test_reboot_detected_by_boot_id_gives_zero(tmp_path):
    NetworkDeltas(tmp_path, boot_id="before").update(counters(eth0=(100, 100, 1, 1)))
    # after a reboot the counters restarted and happen to exceed the old values: still no delta
    after = NetworkDeltas(tmp_path, boot_id="after")
    assert after.update(counters(eth0=(5000, 5000, 50, 50))) == ZERO
    assert after.update(counters(eth0=(5100, 5000, 51, 50)))["bytes_in"] == 100


SCRIPT = """
import json, sys
from garrison.agent.deltas import NetworkDeltas
from garrison.collectors.base import InterfaceCounters
values = json.loads(sys.argv[2])
print(json.dumps(NetworkDeltas(sys.argv[1]).update({"eth0": InterfaceCounters("eth0", *values)})))
"""


def test_baseline_persists_across_processes(tmp_path):
    def run(values):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(values)],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    assert run([1000, 2000, 10, 20]) == ZERO
    assert run([1500, 2100, 15, 21]) == {"bytes_in": 500, "bytes_out": 100, "packets_in": 5, "packets_out": 1}
    stored = json.loads((tmp_path / "counters.json").read_text())
    assert stored["interfaces"]["eth0"]["bytes_in"] == 1500


def test_corrupt_state_file_restarts_from_zero(tmp_path):
    (tmp_path / "counters.json").write_text("{not json")
    assert NetworkDeltas(tmp_path, boot_id="b").update(counters(eth0=(5, 5, 5, 5))) == ZERO


sample = st.tuples(*[st.integers(0, 2**64 - 1)] * 4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["eth0", "wlan0", "usb0"]), sample), min_size=1, max_size=6))
def test_deltas_are_never_negative(tmp_path_factory, rounds):
    deltas = NetworkDeltas(tmp_path_factory.mktemp("d"), boot_id="b")
    for round_counters in rounds:
        result = deltas.update(counters(**round_counters))
        assert all(value >= 0 for value in result.values())
