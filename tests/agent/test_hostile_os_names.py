"""A local process chooses names the agent reports: its own name (comm), the path of its
executable, a file it drops in a world-writable PATH directory. Bytes that are not UTF-8 there
must show up escaped, not cost the device its socket owners or its whole report (the engine
rejected the JSON report as InvalidPayload; a CBOR report could not be built at all)."""
import os
import shutil
import subprocess
import sys

import pytest

from garrison.agent import report
from garrison.agent.collect import ReportCollector
from garrison.collectors import posture, processes
from garrison.detect.ingest.validate import validate

LISTENER = (
    "import ctypes, socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "if len(sys.argv) > 1: ctypes.CDLL(None).prctl(15, b'ev\\xffil', 0, 0, 0)  # PR_SET_NAME\n"
    "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
)


def start(executable, *args):
    proc = subprocess.Popen([executable, "-c", LISTENER, *args], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def sent_and_validated(built, fmt):
    """The report as the engine sees it (decoded from the wire, validated)."""
    from garrison.wire import codec

    return validate(codec.decode(report.encode(built, fmt), fmt))


def owner_of(built, port):
    return [e for e in built["metrics"]["socket_owners"]["listening_ports"] if e["port"] == port]


def test_a_process_that_names_itself_in_bytes_hides_no_socket_owner(tmp_path, procs):
    proc, port = start(sys.executable, "rename")
    procs.append(proc)
    assert processes.socket_owners()  # raised UnicodeDecodeError: the whole extension left out
    built, _ = ReportCollector(tmp_path / "s", ["listening_tcp"], persist=False, socket_owners=True).collect(1)
    [entry] = owner_of(built, port)
    assert entry["pid"] == proc.pid and entry["process"] == "ev\\xffil"
    for fmt in ("json", "cbor"):
        assert owner_of(sent_and_validated(built, fmt), port)[0]["process"] == "ev\\xffil"


def test_an_executable_at_a_non_utf8_path_does_not_cost_the_report(tmp_path, procs):
    where = os.path.join(os.fsencode(tmp_path), b"b\xffd")
    os.mkdir(where)
    executable = os.path.join(where, b"python3")
    shutil.copy(os.path.realpath(sys.executable), executable)
    proc, port = start(os.fsdecode(executable))
    procs.append(proc)
    built, _ = ReportCollector(tmp_path / "s", ["listening_tcp"], persist=False, socket_owners=True).collect(1)
    [entry] = owner_of(built, port)
    assert entry["executable"] == f"{tmp_path}/b\\xffd/python3"
    for fmt in ("json", "cbor"):  # json: rejected InvalidPayload, cbor: no report built, before
        assert owner_of(sent_and_validated(built, fmt), port)[0]["executable"] == entry["executable"]


def test_a_file_named_in_bytes_in_a_world_writable_path_dir_does_not_cost_the_report(tmp_path):
    bin_dir = tmp_path / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    dropped = os.path.join(os.fsencode(bin_dir), b"x\xff")
    with open(dropped, "wb"):
        pass
    os.chmod(dropped, 0o666)
    metrics = posture.collect_posture(str(tmp_path), ["path"])
    name = posture.METRICS["world_writable_path_files"]
    assert metrics[name] == {"string_list": ["/usr/bin/x\\xff"]}
    built = report.build(1, custom_metrics=metrics)
    for fmt in ("json", "cbor"):
        assert sent_and_validated(built, fmt)["custom_metrics"][name] == [{"string_list": ["/usr/bin/x\\xff"]}]


def test_an_executable_at_a_path_past_the_wire_limit_does_not_cost_the_report(tmp_path, procs):
    where = tmp_path / "/".join(["d" * 200] * 6)  # 1,200+ characters: the engine takes 1,024
    where.mkdir(parents=True)
    shutil.copy(os.path.realpath(sys.executable), where / "python3")
    proc, port = start(str(where / "python3"))
    procs.append(proc)
    built, _ = ReportCollector(tmp_path / "s", ["listening_tcp"], persist=False, socket_owners=True).collect(1)
    [entry] = owner_of(built, port)
    assert len(entry["executable"]) == 1024 and entry["executable"].startswith("...")
    assert entry["executable"].endswith("d" * 200 + "/python3")  # the end names the program
    for fmt in ("json", "cbor"):  # json: rejected InvalidPayload before
        assert owner_of(sent_and_validated(built, fmt), port)[0]["executable"] == entry["executable"]


def test_a_long_non_utf8_file_name_in_a_world_writable_path_dir_stays_within_the_wire_limit(tmp_path):
    bin_dir = tmp_path / "usr" / "local" / "sbin"
    bin_dir.mkdir(parents=True)
    dropped = os.path.join(os.fsencode(bin_dir), b"\xff" * 255)  # 1,020 characters escaped
    with open(dropped, "wb"):
        pass
    os.chmod(dropped, 0o666)
    metrics = posture.collect_posture(str(tmp_path), ["path"])
    [shown] = metrics[posture.METRICS["world_writable_path_files"]]["string_list"]
    assert len(shown) == 1024 and shown.endswith("\\xff" * 200)
    built = report.build(1, custom_metrics=metrics)  # raised ReportError before: no report at all
    assert sent_and_validated(built, "cbor")["custom_metrics"]


MANY = (
    "import socket, sys, time\n"
    "keep = [socket.socket() for _ in range(600)]\n"
    "for s in keep: s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print('up', flush=True); time.sleep(60)\n"
)


def test_socket_owners_too_big_for_a_report_are_trimmed_not_the_report_lost(tmp_path, procs):
    """600 ports of one process whose path is 1,000 characters: 550 KB of owners. The size
    guard trimmed only the AWS lists, then gave up: no report at all, at every cycle."""
    where = tmp_path / "/".join(["e" * 200] * 4)
    where.mkdir(parents=True)
    shutil.copy(os.path.realpath(sys.executable), where / "python3")
    proc = subprocess.Popen([str(where / "python3"), "-c", MANY], stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout.readline().strip() == "up"
    built, _ = ReportCollector(tmp_path / "s", ["listening_tcp"], persist=False, socket_owners=True).collect(1)
    assert len(built["metrics"]["socket_owners"]["listening_ports"]) == 500
    payload = report.encode(built, "json")
    assert len(payload) <= report.MAX_PAYLOAD_BYTES
    from garrison.wire import codec

    checked = validate(codec.decode(payload, "json"))
    assert checked["metrics"]["listening_tcp_ports"]["total"] >= 600  # the true count stays
    assert checked["metrics"]["socket_owners"]["listening_ports"]
