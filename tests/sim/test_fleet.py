"""The simulated fleet against a real Mosquitto: what its devices publish, and its attacks."""
import ipaddress
import json
import random
import subprocess
import sys

import pytest

from sim_helpers import FIRMWARE_SIM, ReportLog
from garrison.sim import FLEET_PROFILE
from garrison.sim.attacks import BACKDOOR_PORTS, C2_RANGE, AttackSpec, parse_duration
from garrison.sim.devices import DEVICE_TYPES, VirtualDevice
from garrison.sim.fleet import Fleet, Publisher

START = 1_764_028_800.0   # 2025-11-25 00:00 UTC: a fixed simulated start, so ids are predictable
HOUR = 3600.0


def tcp_ports(report):
    return {p["port"] for p in report["metrics"]["listening_tcp_ports"]["ports"]}


def remote_ips(report):
    conns = report["metrics"]["tcp_connections"]["established_connections"]["connections"]
    return [ipaddress.ip_address(c["remote_addr"].rsplit(":", 1)[0]) for c in conns]


def at(report):
    return report["header"]["report_id"] / 1000.0 - START


def bytes_out(report):
    return report["metrics"]["network_stats"]["bytes_out"]


@pytest.fixture
def six_hours(mosquitto):
    """50 devices, six simulated hours as fast as possible, one of each attack."""
    attacks = ["backdoor@camera-0001@1h", "c2@gateway-0001@1h", "ddos@camera-0002@2h+1h",
               "scan@sensor-0001@1h+1h", "exfil@gateway-0002@1h", "silent@sensor-0002@3h"]
    fleet = Fleet(50, seed=7, start=START, attacks=[AttackSpec.parse(a) for a in attacks])
    log = ReportLog(mosquitto.url)
    publisher = Publisher(mosquitto.url, clients=2, watch_replies=False)
    summary = fleet.run(publisher, duration=6 * HOUR, accelerate=0, fmt="cbor", short_names=True)
    publisher.close()
    assert log.wait_for(lambda l: l.count >= summary.reports, timeout=30)
    log.close()
    return summary, log.reports


def test_every_report_arrives_with_increasing_ids_on_the_interval(six_hours):
    summary, reports = six_hours
    assert summary.devices == 50 and len(reports) == 50
    assert {name: len(r) for name, r in reports.items()} == summary.per_device   # nothing lost
    for name, series in reports.items():
        ids = [r["header"]["report_id"] for r in series]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), name
        assert START * 1000 <= ids[0] < (START + 300) * 1000             # staggered first reports
        assert ids[-1] <= (START + 6 * HOUR) * 1000
        gaps = [b - a for a, b in zip(ids, ids[1:])]
        assert all(270_000 <= g <= 330_000 for g in gaps), name           # 300 s +- 10%
        if name != "sensor-0002":
            assert 64 <= len(series) <= 80, name
        assert series[0]["metrics"]["network_stats"]["bytes_out"] == 0   # first report: zeroed deltas


def test_device_types_listen_on_stable_ports_and_talk_to_the_cloud(six_hours):
    _, reports = six_hours
    for name, series in reports.items():
        kind = DEVICE_TYPES[name.split("-")[0]]
        clean = [r for r in series if at(r) < HOUR]
        assert clean and all(tcp_ports(r) == set(kind.tcp_ports) for r in clean), name
        cloud = {ipaddress.ip_address(ip) for ip, _ in kind.cloud}
        assert cloud <= set(remote_ips(clean[-1])), name
    gateway = reports["gateway-0003"][-1]["metrics"]["tcp_connections"]["established_connections"]
    assert gateway["total"] == len(gateway["connections"]) >= 3 + 4            # cloud plus LAN clients


def test_attacks_change_the_reports_from_their_start(six_hours):
    _, reports = six_hours
    c2 = ipaddress.ip_network(C2_RANGE)

    before, after = [[r for r in reports["camera-0001"] if (at(r) >= HOUR) == late] for late in (False, True)]
    assert before and after
    assert all(tcp_ports(r) == {80, 554} for r in before)
    assert all(len(tcp_ports(r) - {80, 554}) == 1 and tcp_ports(r) - {80, 554} <= set(BACKDOOR_PORTS) for r in after)

    for r in reports["gateway-0001"]:
        assert any(ip in c2 for ip in remote_ips(r)) == (at(r) >= HOUR)
    assert not any(ip in c2 for name, s in reports.items() if name != "gateway-0001" for r in s for ip in remote_ips(r))

    ddos = reports["camera-0002"]
    normal = max(bytes_out(r) for r in ddos if at(r) < 2 * HOUR)
    flooding = [bytes_out(r) for r in ddos if 2 * HOUR + 330 <= at(r) < 3 * HOUR]
    assert flooding and min(flooding) > 100 * normal and min(flooding) > 500_000_000
    assert all(bytes_out(r) <= normal * 3 for r in ddos if at(r) >= 3 * HOUR + 330)        # ended after 1 h

    for r in reports["sensor-0001"]:
        total = r["metrics"]["tcp_connections"]["established_connections"]["total"]
        assert (total >= 150) == (HOUR <= at(r) < 2 * HOUR)

    exfil = [bytes_out(r) for r in reports["gateway-0002"] if at(r) >= HOUR + 330]
    assert exfil and min(exfil) > 40_000_000                                  # 150-300 KB/s for 5 minutes

    silent = reports["sensor-0002"]
    assert silent and max(at(r) for r in silent) < 3 * HOUR
    assert six_hours[0].silenced_reports >= 30


def test_daily_rhythm_peaks_at_the_type_peak_hour():
    camera = VirtualDevice("camera-x", DEVICE_TYPES["camera"], random.Random(1))
    def mean_out(hour):
        return sum(camera.observe(START + hour * HOUR, 300).network_stats["bytes_out"] for _ in range(200)) / 200
    peak, trough = mean_out(14), mean_out(2)
    assert peak > 3 * trough                  # swing 0.6: 1.6 / 0.4 = 4 times, give or take noise
    assert 0.8 * 8_000 * 300 * 1.6 < peak * 1.0 < 1.3 * 8_000 * 300 * 1.6 * 1.05


def test_attack_spec_syntax():
    spec = AttackSpec.parse("ddos@camera-0002@1h30m+20m")
    assert (spec.scenario, spec.device, spec.at, spec.duration) == ("ddos", "camera-0002", 5400.0, 1200.0)
    assert parse_duration("1d") == 86400 and parse_duration("90") == 90
    for bad in ("ddos@camera", "nuke@camera-0001@1h", "ddos@camera-0001@soon", "ddos@@1h"):
        with pytest.raises(ValueError):
            AttackSpec.parse(bad)
    with pytest.raises(ValueError, match="no device"):
        Fleet(3, attacks=[AttackSpec.parse("ddos@camera-0099@1h")])


def _sim(*argv, timeout=60):
    return subprocess.run([sys.executable, "-m", "garrison.sim", *argv], cwd=FIRMWARE_SIM,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_runs_an_accelerated_fleet(mosquitto):
    log = ReportLog(mosquitto.url)
    done = _sim("fleet", "--broker", mosquitto.url, "--devices", "30", "--accelerate", "7200", "--duration", "2h",
                "--seed", "3", "--attack", "backdoor@camera-0001@30m", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert "devices 30, reports" in done.stdout
    reports = int(done.stdout.split("reports ")[1].split()[0])
    assert log.wait_for(lambda l: l.count >= reports, timeout=30)
    log.close()
    assert len(log.reports) == 30 and 30 * 20 <= reports <= 30 * 27        # 2 h at 300 s +- 10%
    ids = [r["header"]["report_id"] for s in log.reports.values() for r in s]
    assert max(ids) - min(ids) <= (2 * HOUR + 1) * 1000                      # ids follow the simulated clock
    assert max(ids) - min(ids) >= 1.5 * HOUR * 1000
    assert any(tcp_ports(r) & set(BACKDOOR_PORTS) for r in log.reports["camera-0001"])


@pytest.mark.parametrize("argv, message", [
    (["--attack", "nuke@camera-0001@1h"], "unknown scenario"),
    (["--types", "camera,toaster"], "unknown device type"),
    (["--duration", "soon"], "bad duration"),
    (["--attack", "ddos@camera-0042@1h"], "no device"),
])
def test_cli_rejects_bad_input_in_one_line(argv, message):
    done = _sim("fleet", "--broker", "mqtt://127.0.0.1:9", "--devices", "3", *argv)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_cli_says_when_the_broker_is_unreachable():
    from fixtures import free_port
    done = _sim("fleet", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--devices", "3", "--duration", "1h")
    assert done.returncode == 2 and "cannot reach broker" in done.stderr and "Traceback" not in done.stderr


def test_fleet_profile_loads_in_the_engine():
    profiles = pytest.importorskip("garrison.detect.judge.profiles")
    profile = profiles.load_profile(FLEET_PROFILE)
    names = {b.name for b in profile.behaviors}
    assert {"ddos-bytes-out", "exfil-sustained-bytes-out", "backdoor-tcp-ports", "c2-destinations",
            "scan-connections"} <= names
    assert json.loads(FLEET_PROFILE.read_text())["securityProfileName"] == "garrison-fleet"
