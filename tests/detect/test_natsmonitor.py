"""The NATS adapter of the cloud-side metrics (garrison.detect.ingest.natsmonitor): /connz listings,
shaped as nats-server 2.9.10 writes them for MQTT clients, turned into the BrokerView's events.
The real cluster end to end is tests/scaleout/test_natsview.py."""
from garrison.detect.ingest import brokerlog
from garrison.detect.ingest.natsmonitor import NodeTracker, parse_time
from garrison.detect.judge.cloudmetrics import BrokerView

T0 = 1764460000


def iso(s):
    import datetime
    return datetime.datetime.fromtimestamp(s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


def conn(cid, client, start, in_msgs=0, out_msgs=0, stop=None, reason=None, ip="127.0.0.1", kind="mqtt"):
    entry = {"cid": cid, "kind": "Client", "type": kind, "ip": ip, "port": 40000 + cid, "start": iso(start),
             "in_msgs": in_msgs, "out_msgs": out_msgs, "in_bytes": 0, "out_bytes": 0, "mqtt_client": client}
    if stop is not None:
        entry.update(stop=iso(stop), reason=reason or "Client Closed")
    if kind != "mqtt":
        del entry["mqtt_client"]
    return entry


def kinds(events):
    return [(e.kind, e.client, e.count) for e in events]


def test_parse_time_reads_nats_nanosecond_times():
    import calendar
    assert parse_time("2026-11-30T00:18:46.054476078Z") == calendar.timegm((2026, 11, 30, 0, 18, 46))
    assert parse_time("garbage") is None and parse_time(None) is None


def test_the_first_listing_is_a_baseline_then_growth_connects_and_ends_become_events():
    node = NodeTracker()
    first = node.update([conn(1, "cam-1", T0 - 100, in_msgs=500, out_msgs=9),
                         conn(2, "engine", T0 - 100, in_msgs=7, kind="nats")], T0)
    assert kinds(first) == [(brokerlog.CONNECT, "cam-1", 1)]   # counted before we looked: not re-counted
    assert first[0].time_s == T0 - 100 and first[0].address == "127.0.0.1"
    events = node.update([conn(1, "cam-1", T0 - 100, in_msgs=530, out_msgs=10),
                          conn(3, "cam-2", T0 + 1, in_msgs=4, stop=T0 + 2),           # lived between polls
                          conn(4, "intruder", T0 + 3, stop=T0 + 3, reason="Authentication Failure")], T0 + 5)
    assert sorted(kinds(events)) == sorted([
        (brokerlog.PUBLISH_IN, "cam-1", 30), (brokerlog.PUBLISH_OUT, "cam-1", 1),
        (brokerlog.CONNECT, "cam-2", 1), (brokerlog.PUBLISH_IN, "cam-2", 4), (brokerlog.DISCONNECT, "cam-2", 1),
        (brokerlog.CONNECT_REFUSED, "intruder", 1)])
    # cam-1 left the listing without being seen closed (the closed ring overflowed): it ended now
    assert kinds(node.update([], T0 + 10)) == [(brokerlog.DISCONNECT, "cam-1", 1)]
    assert node.conns == {}


def test_the_view_counts_what_the_events_stand_for_and_has_no_topics_for_dimensions():
    view = BrokerView(lambda: (T0 + 10) * 1000, source="nats-monitor", has_topics=False)
    node = NodeTracker()
    node.update([], T0)
    for event in node.update([conn(1, "cam-1", T0, in_msgs=120, out_msgs=3, stop=T0 + 2),
                              conn(2, "cam-1", T0 + 3, ip="10.0.0.9")], T0 + 5):
        view.feed(event)
    now = (T0 + 10) * 1000
    assert view.value("cam-1", "aws:num-messages-sent", 300, now) == 120
    assert view.value("cam-1", "aws:num-messages-received", 300, now) == 3
    assert view.value("cam-1", "aws:num-connection-attempts", 300, now) == 2
    assert view.value("cam-1", "aws:num-disconnects", 300, now) == 1
    assert view.value("cam-1", "aws:source-ip-address", 300, now) == ["10.0.0.9", "127.0.0.1"]
    assert view.connection("cam-1") == (True, (T0 + 3) * 1000)
    assert view.value("cam-1", "aws:message-byte-size", 300, now) is None   # /connz has no message sizes
    assert view.value("cam-1", "aws:num-messages-sent", 300, now, topic_matches=lambda t: True) is None
