"""The detection matrix's verdict: every attack caught with its expected behavior, the control silent."""
from garrison.sim.scenarios import Matrix, Row


def row(name, expected=(), fired=()):
    return Row(name, f"ns-{name}", list(expected), bool(fired), list(fired), 1 if fired else None,
               1.5 if fired else None)


def test_all_caught_and_a_quiet_control_is_ok():
    matrix = Matrix([row("c2", ["c2-destinations"], ["c2-destinations"]), row("clean")], [], [], 4.0)
    assert matrix.ok and matrix.missed() == [] and matrix.false_alarms() == 0
    assert "every attack detected, no false alarm" in matrix.table()


def test_a_miss_a_wrong_behavior_or_a_false_alarm_fail():
    missed = Matrix([row("exfil", ["exfil-sustained-bytes-out"]), row("clean")], [], [], 4.0)
    assert not missed.ok and missed.missed() == ["exfil"]
    assert "NO ALARM" in missed.table() and "NOT DETECTED: exfil" in missed.table()
    wrong = Matrix([row("ddos", ["ddos-bytes-out"], ["backdoor-udp-ports"]), row("clean")], [], [], 4.0)
    assert not wrong.ok and wrong.missed() == ["ddos"]
    noisy = Matrix([row("clean", fired=["scan-connections"])], [{"thingName": "ns-x"}], [], 4.0)
    assert not noisy.ok and noisy.false_alarms() == 2 and "2 FALSE ALARM(S)" in noisy.table()
