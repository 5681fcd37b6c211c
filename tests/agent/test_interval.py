"""What the socket-event collector adds to a report: the extension (Garrison engines only), folding
(opt-in, AWS too), and which configurations get which."""
import pytest

from garrison.agent import config as cfg
from garrison.agent import interval
from garrison.detect.ingest.validate import validate

SUMMARY = {
    "available": True, "seconds": 60.0, "events": 9, "overflow": 2, "lost": 1,
    "connections": [
        {"protocol": "tcp", "remote_address": "203.0.113.66", "remote_port": 443, "local_port": 41000,
         "count": 3, "bytes_in": 900, "bytes_out": 100},
        {"protocol": "udp", "remote_address": "fd00::53", "remote_port": 53, "local_port": 50000,
         "count": 1, "bytes_in": 0, "bytes_out": 0},
        {"protocol": "tcp", "remote_address": "10.0.0.1", "remote_port": 1883, "local_port": 40001,
         "count": 1, "bytes_in": 5, "bytes_out": 5},
    ],
    "listeners": [{"protocol": "tcp", "port": 4444, "address": "0.0.0.0", "count": 1},
                  {"protocol": "tcp", "port": 4444, "address": "::", "count": 1},
                  {"protocol": "udp", "port": 69, "address": "0.0.0.0", "count": 1}],
}


def _config(**options):
    return cfg.load(environ={}, thing="t", state_dir="/tmp/unused", **options)


@pytest.mark.parametrize("options, expected", [
    ({}, (True, True, False)),                                              # mqtt: on, with the extension
    ({"socket_events": "off"}, (False, False, False)),
    ({"broker": "mqtts://abc-ats.iot.eu-west-1.amazonaws.com:8883"}, (False, False, False)),  # AWS: auto is off
    ({"broker": "mqtts://abc-ats.iot.eu-west-1.amazonaws.com:8883", "fold_interval_connections": True},
     (True, False, True)),                                                  # folding works for AWS too
    ({"broker": "mqtts://abc-ats.iot.eu-west-1.amazonaws.com", "socket_events": "on"}, (True, False, False)),
    ({"fold_interval_connections": True}, (True, True, True)),
])
def test_plan(options, expected):
    assert interval.plan(_config(**options)) == expected


def test_awsiot_and_greengrass_never_get_the_extension():
    class Fake:
        broker_address = ("localhost", 8883, True)
        socket_events, fold_interval_connections = "on", True
    for transport in ("awsiot", "greengrass"):
        Fake.transport = transport
        assert interval.plan(Fake) == (True, False, True)


def test_extension_merges_listeners_per_port_caps_lists_and_counts_what_it_cut():
    group = interval.extension(SUMMARY, max_items=2)
    assert group["connections"] == [
        {"remote_addr": "203.0.113.66:443", "protocol": "tcp", "local_port": 41000, "count": 3,
         "bytes_in": 900, "bytes_out": 100},
        {"remote_addr": "[fd00::53]:53", "protocol": "udp", "local_port": 50000, "count": 1,
         "bytes_in": 0, "bytes_out": 0}]
    assert group["listening_ports"] == [{"port": 4444, "protocol": "tcp", "count": 2},
                                        {"port": 69, "protocol": "udp", "count": 1}]
    assert (group["events"], group["overflow"], group["lost"]) == (9, 2 + 1, 1)   # one connection cut
    doc = {"header": {"report_id": 1, "version": "1.0"}, "metrics": {"interval_sockets": group}}
    assert validate(doc) == doc                                                    # the engine takes it


def test_fold_adds_new_tcp_destinations_once_and_counts_them():
    built = {"header": {"report_id": 1, "version": "1.0"}, "metrics": {"tcp_connections": {
        "established_connections": {"connections": [{"remote_addr": "10.0.0.1:1883", "local_port": 40001}],
                                    "total": 1}}}}
    assert interval.fold(built, SUMMARY, max_items=500) == 1       # 10.0.0.1 was listed; UDP is not folded
    group = built["metrics"]["tcp_connections"]["established_connections"]
    assert group == {"connections": [{"remote_addr": "10.0.0.1:1883", "local_port": 40001},
                                     {"remote_addr": "203.0.113.66:443", "local_port": 41000}], "total": 2}
    empty = {"header": {"report_id": 1, "version": "1.0"}, "custom_metrics": {"x": [{"number": 1}]}}
    assert interval.fold(empty, SUMMARY, max_items=1) == 2          # capped list, true total
    assert empty["metrics"]["tcp_connections"]["established_connections"] == {
        "connections": [{"remote_addr": "203.0.113.66:443", "local_port": 41000}], "total": 2}
