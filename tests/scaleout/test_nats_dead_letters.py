"""The scale-out dead-letter stream GARRISON_DEADLETTER is bounded like the MQTT path's directory
([dead_letters] max_files / max_bytes, discard new), on a real 3-node NATS cluster: a device whose
reports keep failing cannot fill NATS's storage; the first dead letters are the ones kept; a report
not kept is still answered InternalError and acknowledged (never redelivered); a stream made by an
older garrison-detect (limited by age only) is updated in place when a worker starts."""
import asyncio
import json
import logging
import time
import urllib.request

from garrison.agent import report as wire
from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.ingest.jetstream import (DEADLETTER_MAX_AGE_S, DEADLETTER_MAX_MSG_SIZE, DEADLETTER_STREAM,
                                              DEADLETTER_SUBJECT, STREAM, DeadLetterCaps, NatsIngest, consumer_name,
                                              partition_of)
from fixtures import free_port, wait_for
from ledger import PoisonedSink

from engine_support import build
from world import PARTITIONS, Device, Worker, cli


def _js(urls, work):
    """Run `work(js)` on a fresh connection to the cluster; its result."""
    import nats

    async def run():
        nc = await nats.connect(servers=urls)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


def _dead_letters(urls):
    """(config, [(subject, headers, payload)]) of the dead-letter stream."""
    async def work(js):
        info = await js.stream_info(DEADLETTER_STREAM)
        msgs = [await js.get_msg(DEADLETTER_STREAM, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)
                if info.state.messages]
        return info.config, [(m.subject, m.headers or {}, m.data) for m in msgs]
    return _js(urls, work)


def _consumer(urls, partition):
    async def work(js):
        info = await js.consumer_info(STREAM, consumer_name(partition))
        return info.num_pending, info.num_ack_pending, info.delivered.stream_seq, info.ack_floor.stream_seq
    return _js(urls, work)


def _replies(device, thing):
    with device.lock:
        return {rid: answers for (t, rid), answers in device.by_report.items() if t == thing}


def test_the_caps_become_the_streams_limits():
    assert DeadLetterCaps().limits() == {"max_msgs": 1000, "max_bytes": 64 * 2 ** 20,
                                         "max_msg_size": 128 * 1024 + 2048, "discard": "new"}
    small = DeadLetterCaps(max_msgs=5, max_bytes=4096)
    assert (small.limits()["max_bytes"], small.limits()["max_msg_size"], small.keep_none) == (4096, 4096, False)
    # JetStream reads 0 as no limit at all: a cap of 0 gives the stream 1, and nothing is published
    for none in (DeadLetterCaps(max_msgs=0), DeadLetterCaps(max_bytes=0)):
        assert none.keep_none and min(none.limits()["max_msgs"], none.limits()["max_bytes"]) == 1


def test_a_full_dead_letter_stream_keeps_the_first_and_still_answers_and_acknowledges_the_rest(nats_cluster,
                                                                                                caplog):
    sink = PoisonedSink()
    ingest = NatsIngest(nats_cluster.urls, Ingestor(sink, min_interval_s=0), batch_size=10,
                        dead_letters=DeadLetterCaps(max_msgs=1))
    device = None
    try:
        ingest.start()
        assert ingest.setup(PARTITIONS, replicas=3) == PARTITIONS
        for p in range(PARTITIONS):
            ingest.own(p)
        device = Device("127.0.0.1", nats_cluster.nodes[1].mqtt_port)
        payloads = [wire.encode(build(connections=1, report_id=1000 + i), "json") for i in range(2)]
        with caplog.at_level(logging.ERROR, "garrison.ingest"):
            for i, payload in enumerate(payloads):
                device.publish("poison", payload).wait_for_publish(10)
                wait_for(lambda: len(_replies(device, "poison")) == i + 1, 20, f"poison report {i + 1}'s answer")
            device.publish("fine", wire.encode(build(connections=1, report_id=1000), "json")).wait_for_publish(10)
            wait_for(lambda: _replies(device, "fine"), 20, "the fine report's answer")
        # both answered InternalError, once each
        assert _replies(device, "poison") == {1000: ["REJECTED:InternalError"], 1001: ["REJECTED:InternalError"]}
        assert _replies(device, "fine") == {1000: ["ACCEPTED"]}
        # both acknowledged: nothing pending or awaiting an ack, so nothing is redelivered
        p = partition_of("poison", PARTITIONS)
        pending, ack_pending, delivered, ack_floor = wait_for(
            lambda: (lambda c: c if c[1] == 0 else None)(_consumer(nats_cluster.urls, p)), 10, "the acks")
        assert (pending, ack_pending) == (0, 0) and ack_floor == delivered
        calls = sink.calls
        # only the first is kept; the stream refused the second
        config, letters = _dead_letters(nats_cluster.urls)
        assert (config.max_msgs, config.max_bytes, config.max_msg_size) == (1, 64 * 2 ** 20, DEADLETTER_MAX_MSG_SIZE)
        assert config.discard == "new" and config.max_age == DEADLETTER_MAX_AGE_S
        assert len(letters) == 1
        subject, headers, data = letters[0]
        assert subject == f"{DEADLETTER_SUBJECT}.{p}" and data == payloads[0]
        assert headers["Garrison-Subject"] == f"reports.{p}.poison.json"
        assert "a bug this report trips" in headers["Garrison-Reason"]
        assert headers["Garrison-Size"] == str(len(payloads[0]))
        assert (ingest.dead_letters.kept, ingest.dead_letters.dropped) == (1, 1)
        full = [r.getMessage() for r in caplog.records if "is full" in r.getMessage()]
        assert len(full) == 1 and "maximum messages exceeded" in full[0] and "1 not kept since" in full[0]
        # a third poison report within the minute is counted, not logged again
        caplog.clear()
        device.publish("poison", wire.encode(build(connections=1, report_id=1002), "json")).wait_for_publish(10)
        wait_for(lambda: len(_replies(device, "poison")) == 3, 20, "the third poison report's answer")
        assert _replies(device, "poison")[1002] == ["REJECTED:InternalError"]
        assert ingest.dead_letters.dropped == 2 and not [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(_dead_letters(nats_cluster.urls)[1]) == 1 and sink.calls > calls
    finally:
        if device is not None:
            device.close()
        ingest.stop()


def _metrics(port, token):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def _poison_the_things_table(dsn):
    """A real failure of the real engine: PostgreSQL refuses every write to the thing `poison`."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN RAISE EXCEPTION 'a bug this report trips'; END $$""")
        conn.execute("CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON things FOR EACH ROW "
                     "WHEN (NEW.name = 'poison') EXECUTE FUNCTION poison()")


def test_a_worker_bounds_an_older_unbounded_stream_and_counts_what_it_does_not_keep(nats_cluster, pg_database,
                                                                                     tmp_path):
    """The stream as an older garrison-detect made it (30 days, no other limit) is updated in place
    when `serve --nats` starts with `[dead_letters] max_files = 1`; then two reports that keep
    failing are both answered and acknowledged, the first kept, the second logged and counted
    (GET /metrics); `nats-setup --config` sets the caps of another config."""
    from nats.js.api import StorageType, StreamConfig

    async def old_stream(js):
        await js.add_stream(StreamConfig(name=DEADLETTER_STREAM, description="Garrison: reports the engine set aside "
                                         "after failing on them", subjects=[DEADLETTER_SUBJECT + ".>"],
                                         storage=StorageType.FILE, num_replicas=3, max_age=DEADLETTER_MAX_AGE_S))
        await js.publish(f"{DEADLETTER_SUBJECT}.0", b"an old dead letter")
    _js(nats_cluster.urls, old_stream)
    config, _ = _dead_letters(nats_cluster.urls)
    assert (config.max_msgs, config.max_bytes, config.discard) == (-1, -1, "old")

    port, token = free_port(), "metrics-token"
    worker = Worker(tmp_path, nats_cluster.urls, pg_database,
                    extra=("--api-bind", f"127.0.0.1:{port}", "--api-token", token))
    worker.config.write_text(worker.config.read_text() + "\n[dead_letters]\nmax_files = 2\nmax_bytes = 100000\n")
    device = None
    try:
        worker.start()
        config, letters = _dead_letters(nats_cluster.urls)
        assert (config.max_msgs, config.max_bytes, config.max_msg_size) == (2, 100000, 100000)
        assert config.discard == "new" and config.max_age == DEADLETTER_MAX_AGE_S and config.num_replicas == 3
        assert [data for _, _, data in letters] == [b"an old dead letter"]  # within the caps: kept
        assert f"stream {DEADLETTER_STREAM}: limits updated to at most 2 messages, 100000 bytes" in worker.text()
        assert "max_msgs -1, max_bytes -1" in worker.text() and "discard old" in worker.text()

        _poison_the_things_table(pg_database)
        device = Device("127.0.0.1", nats_cluster.nodes[0].mqtt_port)
        now = int(time.time() * 1000)
        payloads = [wire.encode(build(connections=1, report_id=now + i), "json") for i in range(2)]
        for i, payload in enumerate(payloads):
            device.publish("poison", payload).wait_for_publish(10)
            wait_for(lambda: len(_replies(device, "poison")) == i + 1, 30, f"poison report {i + 1}'s answer")
        assert _replies(device, "poison") == {now: ["REJECTED:InternalError"], now + 1: ["REJECTED:InternalError"]}
        p = partition_of("poison", PARTITIONS)
        wait_for(lambda: _consumer(nats_cluster.urls, p)[:2] == (0, 0), 10, "both acknowledged")
        _, letters = _dead_letters(nats_cluster.urls)
        assert [data for _, _, data in letters] == [b"an old dead letter", payloads[0]]
        text = _metrics(port, token)
        assert 'garrison_dead_letters_total{outcome="kept"} 1.0' in text
        assert 'garrison_dead_letters_total{outcome="dropped"} 1.0' in text
        log = worker.text()
        assert log.count("is full") == 1 and "at most 2 messages, 100000 bytes" in log and "1 not kept since" in log
    finally:
        if device is not None:
            device.close()
        assert worker.stop() == 0, worker.text()

    other = tmp_path / "other.toml"
    other.write_text("[dead_letters]\nmax_files = 5\n")
    out = cli(pg_database, "nats-setup", "--nats", ",".join(nats_cluster.urls), "--partitions", str(PARTITIONS),
              "--config", str(other)).stdout
    assert f"stream {DEADLETTER_STREAM}: at most 5 messages, {64 * 2 ** 20} bytes" in out
    config, letters = _dead_letters(nats_cluster.urls)
    assert (config.max_msgs, config.max_bytes, len(letters)) == (5, 64 * 2 ** 20, 2)
    assert json.loads(cli(pg_database, "things", "list", "--json").stdout) == []  # poison never stored
