"""The dead-letter directory is bounded (files and bytes), with real files, a real Mosquitto and
the real `serve`: a device whose reports keep failing cannot fill the disk, the first dead
letters are the ones kept, and a report not kept is still answered and acknowledged."""
import base64
import json
import logging
import subprocess
import time
import urllib.request
from pathlib import Path

from garrison.agent import report as wire
from garrison.detect.ingest.deadletter import DeadLetters, digest
from garrison.detect.ingest.frontdoor import INTERNAL_ERROR, Ingestor
from garrison.detect.ingest.mqtt import MqttIngest
from garrison.wire.limits import MAX_PAYLOAD_BYTES

from engine_stream import CLI, Engine, cli
from fixtures import free_port, wait_for
from ledger import PoisonedSink
from test_hostile_ingest import Device, honest_report

TOPIC = b"$aws/things/a/defender/metrics/cbor"


def _full_lines(caplog):
    return [r.getMessage() for r in caplog.records if "is full" in r.getMessage()]


def test_a_full_directory_keeps_the_first_dead_letters_and_counts_the_rest(tmp_path, caplog):
    dead = DeadLetters(str(tmp_path / "dead"), max_files=3)
    with caplog.at_level(logging.ERROR, "garrison.ingest"):
        paths = [dead.put(TOPIC, b"payload %d" % i, "boom", 3, now_ms=1000 + i) for i in range(6)]
    assert [p is not None for p in paths] == [True] * 3 + [False] * 3
    assert sorted(p.name for p in (tmp_path / "dead").iterdir()) == sorted(p.name for p in paths[:3])
    assert [r["time_ms"] for r in DeadLetters(str(tmp_path / "dead")).list()] == [1000, 1001, 1002]
    assert (dead.kept, dead.dropped) == (3, 3)
    lines = _full_lines(caplog)  # one line a minute, saying how many were not kept
    assert len(lines) == 1 and "1 not kept since the engine started" in lines[0] and "at most 3 files" in lines[0]
    # the operator deletes one: room for the next
    paths[0].unlink()
    assert dead.put(TOPIC, b"payload 6", "boom", 3, now_ms=1006) is not None
    assert dead.usage()[0] == 3


def test_the_directory_stays_under_its_byte_cap(tmp_path):
    cap = 50_000
    dead = DeadLetters(str(tmp_path / "dead"), max_bytes=cap)
    payload = bytes(range(256)) * 40  # 10,240 bytes: a file of about 14 KB in base64 JSON
    paths = [dead.put(TOPIC, payload + bytes([i]), "boom", 3, now_ms=2000 + i) for i in range(10)]
    sizes = [p.stat().st_size for p in paths if p is not None]
    assert paths[len(sizes):] == [None] * (10 - len(sizes))  # the first ones kept, the rest refused
    assert len(sizes) == 3 and sum(sizes) <= cap < sum(sizes) + sizes[0]  # filled up to the cap, not past
    assert dead.usage() == (3, sum(sizes)) and dead.dropped == 7


def test_a_payload_is_kept_up_to_the_wire_limit(tmp_path):
    dead = DeadLetters(str(tmp_path / "dead"))
    path = dead.put(TOPIC, b"x" * (MAX_PAYLOAD_BYTES + 5000), "boom", 3)
    record = json.loads(path.read_text())
    assert (record["size"], record["truncated"]) == (MAX_PAYLOAD_BYTES + 5000, True)
    assert len(base64.b64decode(record["payload_base64"])) == MAX_PAYLOAD_BYTES
    small = json.loads(dead.put(TOPIC, b"\xd8\x1c", "boom", 3).read_text())
    assert (small["size"], small["truncated"], small["payload_base64"]) == (2, False, "2Bw=")


def test_a_dead_letter_not_kept_is_still_answered_and_acknowledged(mosquitto, tmp_path):
    sink = PoisonedSink()
    dead = DeadLetters(str(tmp_path / "dead"), max_files=1)
    client_id = f"eng-{time.monotonic_ns()}"
    ingest = MqttIngest(mosquitto.url, Ingestor(sink, min_interval_s=0), client_id=client_id,
                        dead_letters=dead, max_attempts=3).start()
    poison, fine = Device(mosquitto, "poison"), Device(mosquitto, "fine")
    try:
        assert ingest.connected.wait(10)
        poison.publish(honest_report(1))
        poison.publish(honest_report(2))
        answers = wait_for(lambda: poison.got(2), timeout=20, what="both poison reports' answers")
        assert [a.error_code for a in answers] == [INTERNAL_ERROR] * 2
        letters = dead.list()
        assert len(letters) == 1 and letters[0]["digest"] == digest(wire.topic("poison", "json").encode(),
                                                                     honest_report(1))
        assert (dead.kept, dead.dropped) == (1, 1)
        calls = sink.calls
        # acknowledged, the one not kept too: the same session gets neither again
        ingest.stop()
        ingest = MqttIngest(mosquitto.url, Ingestor(sink, min_interval_s=0), client_id=client_id,
                            dead_letters=dead).start()
        assert ingest.connected.wait(10)
        fine.publish(honest_report(int(time.time() * 1000)))
        assert wait_for(fine.got, timeout=10)[0].accepted
        assert sink.calls == calls and len(poison.got()) == 2 and len(dead.list()) == 1
    finally:
        ingest.stop()
        poison.close()
        fine.close()


def _metrics(port: int, token: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def test_serve_applies_the_configured_cap_and_acknowledges_what_it_does_not_keep(mosquitto, tmp_path):
    """The real `serve` with `[dead_letters] max_files = 1`: two reports that were in flight when
    the engine died twice are dead-lettered; the first is kept, the second answered, acknowledged,
    logged and counted (GET /metrics), not kept; `dead-letters` lists the one kept."""
    port, token = free_port(), "metrics-token"
    engine = Engine(tmp_path, mosquitto.url, "--api-bind", f"127.0.0.1:{port}", "--api-token", token)
    engine.config.write_text("[alerts]\nlog = false\nmqtt = false\n\n[dead_letters]\nmax_files = 1\n")
    topic = wire.topic("crasher", "json").encode()
    payloads = [honest_report(int(time.time() * 1000) + i) for i in range(2)]
    (tmp_path / "engine.db.inflight").write_text(json.dumps({digest(topic, p): 2 for p in payloads}))
    engine.start()
    crasher, fine = Device(mosquitto, "crasher"), Device(mosquitto, "fine3")
    try:
        for payload in payloads:
            crasher.publish(payload)
        answers = wait_for(lambda: crasher.got(2), timeout=20, what="both answers")
        assert [a.error_code for a in answers] == [INTERNAL_ERROR] * 2
        listed = json.loads(cli(engine.db, "dead-letters", "--json"))
        assert [r["digest"] for r in listed] == [digest(topic, payloads[0])]
        log = engine.log.read_text()
        assert log.count("is full") == 1 and "at most 1 files" in log and "1 not kept since" in log
        text = _metrics(port, token)
        assert 'garrison_dead_letters_total{outcome="kept"} 1.0' in text
        assert 'garrison_dead_letters_total{outcome="dropped"} 1.0' in text
        # acknowledged: the restarted engine (the same session) is not given them again
        engine.stop()
        engine.start()
        fine.publish(honest_report(int(time.time() * 1000)))
        assert wait_for(fine.got, timeout=15, what="the fine device's answer")[0].accepted
        assert len(crasher.got()) == 2 and len(json.loads(cli(engine.db, "dead-letters", "--json"))) == 1
    finally:
        crasher.close()
        fine.close()
        engine.stop()


def test_dead_letters_cli_lists_a_directory_given_with_dir(tmp_path):
    outside, payload = tmp_path / "elsewhere", b"\xd8\x1c"
    kept = DeadLetters(str(outside)).put(TOPIC, payload, "boom", 3, now_ms=5000)
    assert kept == outside / f"5000-{digest(TOPIC, payload)}.json"
    listed = json.loads(cli(tmp_path / "x.db", "dead-letters", "--dir", str(outside), "--json"))
    assert [(r["topic"], r["size"], r["file"]) for r in listed] == [(TOPIC.decode(), 2, str(kept))]
    assert json.loads(cli(tmp_path / "x.db", "dead-letters", "--json")) == []  # not DB.dead-letters


def test_serve_keeps_dead_letters_where_told_with_the_configured_caps(tmp_path):
    from garrison.detect.config import Config
    from garrison.detect.service import _dead_letters

    config = Config(dead_letters_max_files=7, dead_letters_max_bytes=4096)
    beside = _dead_letters(str(tmp_path / "e.db"), config)
    assert (beside.directory, beside.max_files, beside.max_bytes) == (tmp_path / "e.db.dead-letters", 7, 4096)
    assert _dead_letters("postgresql://garrison@db/garrison", config) is None  # only logged
    config.dead_letters_dir = str(tmp_path / "dl")
    told = _dead_letters("postgresql://garrison@db/garrison", config)
    assert (told.directory, told.max_files, told.max_bytes) == (tmp_path / "dl", 7, 4096)


def test_dead_letters_cli_on_postgresql_needs_dir(tmp_path):
    proc = subprocess.run(CLI + ["dead-letters", "--db", "postgresql://garrison@db/garrison"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "give --dir DIR" in proc.stderr


def test_on_postgresql_a_report_in_flight_at_each_death_is_set_aside_in_the_dead_letter_directory(
    mosquitto, pg_dsn, tmp_path
):
    """PostgreSQL has no file beside it: with --dead-letters the in-flight file lives in that
    directory (hidden: not listed as a dead letter), so a report that kills the engine is set
    aside after its third death, as on SQLite, instead of crash-looping every restart."""
    from garrison.detect.config import Config
    from garrison.detect.service import BrokerLink, Service

    dead = tmp_path / "dead"
    dead.mkdir(mode=0o700)
    topic = wire.topic("crasher-pg", "json").encode()
    poison = honest_report(int(time.time() * 1000))
    (dead / ".inflight").write_text(json.dumps({digest(topic, poison): 2}))  # in flight at two deaths
    config = Config(dead_letters_dir=str(dead), client_id=f"eng-{time.monotonic_ns()}", alerts={"log": False})
    service = Service(pg_dsn, BrokerLink(mosquitto.url), config, clock_offset_s=0).start()
    crasher, fine = Device(mosquitto, "crasher-pg"), Device(mosquitto, "fine-pg")
    try:
        crasher.publish(poison)
        fine.publish(honest_report(int(time.time() * 1000)))
        assert wait_for(fine.got, timeout=15, what="the fine device's answer")[0].accepted
        assert wait_for(crasher.got, timeout=15, what="the crasher's answer")[0].error_code == INTERNAL_ERROR
        kept = DeadLetters(str(dead)).list()
        assert [(r["digest"], r["reason"]) for r in kept] == [
            (digest(topic, poison), "the engine process died while handling it")
        ]
        assert service.engine.last_report("crasher-pg") is None  # never handled
        assert service.engine.last_report("fine-pg") is not None
        # emptied when fine-pg's batch ends, just after its reply went out
        wait_for(lambda: (dead / ".inflight").read_text() == "{}", 10, "the in-flight file to be emptied")
    finally:
        crasher.close()
        fine.close()
        service.shutdown()


def _returns_despite(fifo: Path, work, failure: str) -> None:
    """Run `work` (which meets the FIFO `fifo`) on a thread: it must return within 5 s, not wait
    for a writer. If it does wait (the old code), a writer is opened so that the thread ends."""
    import os
    import threading
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(5)
    try:
        assert not thread.is_alive(), failure
    finally:
        if thread.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_the_in_flight_file_is_read_only_as_a_small_regular_file_not_through_a_symlink(tmp_path, caplog):
    """--dead-letters DIR holds the in-flight file; what else is in DIR must not decide what the
    engine reads at its start: a symlink was followed (to /dev/zero: out of memory at every
    start; to a file of digests: honest reports set aside) and a FIFO hung the start for good."""
    import os
    from garrison.detect.ingest.deadletter import InFlight
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({digest(TOPIC, b"honest"): 2}))
    link = tmp_path / "dead" / ".inflight"
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, "garrison.ingest"):
        assert InFlight(str(link)).suspects == {}
    assert any("cannot read" in r.getMessage() for r in caplog.records)
    link.unlink()
    os.mkfifo(link)
    _returns_despite(link, lambda: InFlight(str(link)), "InFlight waited on a FIFO")


def test_dead_letters_are_listed_without_following_a_symlink_or_waiting_on_a_fifo(tmp_path):
    import os
    directory = tmp_path / "dead"
    kept = DeadLetters(str(directory)).put(TOPIC, b"\xd8\x1c", "boom", 3, now_ms=5000)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"topic": "not a dead letter", "reason": "x"}))
    (directory / "1-link.json").symlink_to(secret)
    os.mkfifo(directory / "2-fifo.json")
    listed = []
    _returns_despite(directory / "2-fifo.json", lambda: listed.extend(DeadLetters(str(directory)).list()),
                     "listing waited on a FIFO")
    assert [r["file"] for r in listed] == [str(kept)]


def test_an_in_flight_file_that_cannot_be_written_is_said_once_not_per_batch(tmp_path, caplog):
    from garrison.detect.ingest.deadletter import InFlight
    in_flight = InFlight(str(tmp_path / "gone" / ".inflight"))  # its directory does not exist
    with caplog.at_level(logging.WARNING, "garrison.ingest"):
        for _ in range(50):
            in_flight.begin(["a", "b"])
            in_flight.end()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"cannot write {tmp_path / 'gone' / '.inflight'}"]


def test_serve_on_postgresql_makes_its_dead_letter_directory_private(tmp_path):
    from garrison.detect.config import Config
    from garrison.detect.service import _in_flight
    directory = tmp_path / "dl"
    directory.mkdir(mode=0o755)
    path = _in_flight("postgresql://garrison@db/garrison", Config(dead_letters_dir=str(directory)))
    assert path == str(directory / ".inflight")
    assert directory.stat().st_mode & 0o777 == 0o700
    assert _in_flight("postgresql://garrison@db/garrison", Config()) is None
    assert _in_flight(str(tmp_path / "e.db"), Config()) == str(tmp_path / "e.db.inflight")
