"""garrison.detect.ops.broker: Mosquitto and the amqtt fallback, each carrying a real report round trip."""
import shutil
import socket

import pytest

from garrison.wire import replies
from garrison.agent import report
from garrison.detect.ops.broker import BrokerError, start_local_broker
from garrison.detect.ingest.frontdoor import Ingestor
from garrison.detect.ingest.mqtt import MqttIngest
from ledger import MemoryLedger
from garrison.agent.transports.paho_compat import new_client
from fixtures import free_port

KINDS = ["amqtt"] + (["mosquitto"] if shutil.which("mosquitto") else [])


def round_trip(broker, thing):
    """A device publishes a report; MqttIngest answers; the device sees ACCEPTED."""
    import threading

    ledger = MemoryLedger()
    engine = MqttIngest(broker.url, Ingestor(ledger), client_id=f"engine-{thing}").start()
    got, done = [], threading.Event()
    device = new_client(thing)
    device.on_message = lambda c, u, msg: (got.append(replies.parse(msg.topic, msg.payload)), done.set())
    device.connect(broker.host, broker.port)
    device.loop_start()
    try:
        assert engine.connected.wait(15)
        device.subscribe(f"$aws/things/{thing}/defender/metrics/cbor/+", 1)
        device.publish("garrison/sync", b"", qos=1).wait_for_publish(10)
        data = report.encode(report.build(11, custom_metrics={"n": 2}), "cbor", short_names=True)
        device.publish(f"$aws/things/{thing}/defender/metrics/cbor", data, qos=1)
        assert done.wait(15)
        assert got[0].accepted and got[0].report_id == 11 and got[0].thing == thing
        assert ledger.reports[thing][0]["custom_metrics"] == {"n": [{"number": 2}]}
    finally:
        device.loop_stop()
        device.disconnect()
        engine.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_local_broker_carries_device_defender_topics(tmp_path, kind):
    broker = start_local_broker(tmp_path, kind=kind)
    try:
        assert broker.kind == kind and broker.running()
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        round_trip(broker, f"via-{kind}")
    finally:
        broker.stop()
    assert not broker.running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


def test_auto_prefers_mosquitto(tmp_path):
    with start_local_broker(tmp_path) as broker:
        assert broker.kind == ("mosquitto" if shutil.which("mosquitto") else "amqtt")


def test_chosen_port_and_loopback_only(tmp_path):
    port = free_port()
    with start_local_broker(tmp_path, port=port, kind="amqtt") as broker:
        assert broker.port == port
        listening = [line for line in open("/proc/net/tcp").read().splitlines()[1:]
                     if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"]
        assert listening and all(line.split()[1].startswith("0100007F:") for line in listening)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # something else answers on the port: say so rather than mistake it for our broker
        with pytest.raises(BrokerError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_local_broker(tmp_path, port=port, kind=KINDS[-1])


def test_unknown_kind(tmp_path):
    with pytest.raises(BrokerError, match="unknown broker kind"):
        start_local_broker(tmp_path, kind="rabbitmq")
