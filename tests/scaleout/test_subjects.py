"""garrison.detect.ingest.jetstream's mapping between NATS subjects and the devices' MQTT topics."""
from garrison.detect.ingest.jetstream import nats_subject, partition_of, report_topic


def test_a_partitioned_subject_is_the_devices_report_topic():
    assert report_topic("reports.3.thing-7.cbor") == "$aws/things/thing-7/defender/metrics/cbor"
    assert report_topic("reports.3.thing-7") is None
    assert report_topic("other.3.thing-7.json") is None


def test_a_reply_goes_to_the_subject_nats_mqtt_bridges_to_the_devices_topic():
    assert nats_subject("$aws/things/thing-7/defender/metrics/json/accepted") == \
        "$aws.things.thing-7.defender.metrics.json.accepted"
    assert nats_subject("garrison/alerts/thing-7") == "garrison.alerts.thing-7"
    # levels that are not subject tokens (a name NATS's MQTT bridge could not have delivered)
    for thing in ("a.b", "a b", "a*", "a>", ""):
        assert nats_subject(f"$aws/things/{thing}/defender/metrics/json/rejected") is None


def test_partitions_are_fnv1a_of_the_name_mod_p_and_spread_the_fleet():
    assert partition_of("", 4) == 0x811C9DC5 % 4  # the FNV-1a offset basis: nothing hashed
    counts = [0] * 8
    for i in range(8000):
        counts[partition_of(f"sensor-{i}", 8)] += 1
    assert min(counts) > 800  # every partition gets a fair share (1000 expected)
