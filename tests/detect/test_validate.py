"""garrison.detect.ingest.validate on real AWS payloads and on every rejection rule."""
import copy
import json

import pytest

from garrison.agent import report
from garrison.wire import schema
from garrison.detect.ingest.validate import INVALID_PAYLOAD, Invalid, report_id_of, validate

ACCEPTED_FIXTURES = [
    ("aws-docs-example-long.json", "json"),
    ("aws-docs-example-short.json", "json"),
    ("aws-sample-agent-2.0.0-long.json", "json"),
    ("aws-sample-agent-2.0.0-long-second.json", "json"),
    ("aws-sample-agent-2.0.0-long.cbor", "cbor"),
    ("aws-sample-agent-2.0.0-short.json", "json"),
    ("aws-sample-agent-2.0.0-short.cbor", "cbor"),
]


def load(aws_reports, name, fmt="json"):
    return report.decode((aws_reports / name).read_bytes(), fmt)


@pytest.mark.parametrize("name,fmt", ACCEPTED_FIXTURES)
def test_every_aws_fixture_is_accepted_and_normalized_to_long_names(aws_reports, name, fmt):
    doc = load(aws_reports, name, fmt)
    out = validate(doc)
    assert out == schema.to_long(doc)
    assert set(out) <= {"header", "metrics", "custom_metrics"}
    assert out["header"]["version"] == "1.0"
    assert out["header"]["report_id"] == report_id_of(doc) > 0


def test_docs_example_values_survive(aws_reports):
    out = validate(load(aws_reports, "aws-docs-example-short.json"))
    assert out["header"] == {"report_id": 1530305228, "version": "1.0"}
    tcp = out["metrics"]["listening_tcp_ports"]
    assert tcp["total"] == 3 and [p["port"] for p in tcp["ports"]] == [24800, 22, 53]
    assert tcp["ports"][0] == {"interface": "eth0", "port": 24800}
    conns = out["metrics"]["tcp_connections"]["established_connections"]
    assert conns["connections"][0] == conns["connections"][1]  # duplicates kept, as AWS does
    assert conns["connections"][0] == {"local_interface": "eth0", "local_port": 80,
                                       "remote_addr": "192.168.0.1:8000"}
    assert out["metrics"]["network_stats"]["bytes_in"] == 29359307173
    assert out["custom_metrics"] == {"MyMetricOfType_Number": [{"number": 1}]}


def test_every_custom_metric_type_of_the_docs_example(aws_reports):
    custom = validate(load(aws_reports, "aws-docs-example-long.json"))["custom_metrics"]
    assert custom["MyMetricOfType_NumberList"] == [{"number_list": [1, 2, 3]}]
    assert custom["MyMetricOfType_StringList"] == [{"string_list": ["value_1", "value_2"]}]
    assert custom["MyMetricOfType_IpList"] == [{"ip_list": ["172.0.0.0", "172.0.0.10"]}]


def test_sample_agent_quirks(aws_reports):
    first = validate(load(aws_reports, "aws-sample-agent-2.0.0-short.cbor", "cbor"))
    assert first["metrics"]["listening_tcp_ports"]["ports"] == [{"port": 2024, "interface": "0.0.0.0"}]
    assert first["metrics"]["network_stats"]["bytes_in"] == 11102436238  # since-boot total, accepted
    assert first["custom_metrics"]["cpu_usage"] == [{"number": 50.0}]


def test_aws_rejected_bare_custom_metric(aws_reports):
    with pytest.raises(Invalid) as err:
        validate(load(aws_reports, "aws-docs-rejected-bare-custom-metric.json"))
    assert err.value.code == INVALID_PAYLOAD
    assert "my_custom_metric" in err.value.message and "one-element array" in err.value.message


def good():
    return {"header": {"report_id": 5, "version": "1.0"},
            "metrics": {"listening_tcp_ports": {"ports": [{"port": 22, "interface": "eth0"}], "total": 1},
                        "tcp_connections": {"established_connections": {
                            "connections": [{"remote_addr": "[2001:db8::1]:443", "local_port": 5000}],
                            "total": 1}},
                        "network_stats": {"bytes_in": 1, "bytes_out": 2, "packets_in": 3, "packets_out": 4}},
            "custom_metrics": {"temp": [{"number": 21.5}]}}


def test_liberal_inputs():
    doc = good()
    doc["metrics"]["listening_tcp_ports"]["ports"] = [{"pt": 22, "interface": None}, {"port": 22, "if": "eth0"}]
    doc["metrics"]["ns"] = doc["metrics"].pop("network_stats")
    doc["metrics"]["vendor_extension"] = {"anything": [1, 2]}
    out = validate(doc)
    assert out["metrics"]["listening_tcp_ports"]["ports"] == [{"port": 22}, {"port": 22, "interface": "eth0"}]
    assert out["metrics"]["network_stats"]["packets_out"] == 4
    assert "vendor_extension" not in out["metrics"]  # undeclared keys are dropped
    only_custom = {"hed": {"rid": 1, "v": "1.0"}, "cmet": {"n": [{"number_list": []}]}}
    assert validate(only_custom)["custom_metrics"] == {"n": [{"number_list": []}]}


def mutate(path, value):
    doc = good()
    *parents, last = path
    target = doc
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()
TCP = ("metrics", "listening_tcp_ports")
CONN = ("metrics", "tcp_connections", "established_connections", "connections", 0)
NS = ("metrics", "network_stats")

REJECTED = {
    "not an object": ([], None, "expected an object"),
    "missing header": (("header",), DELETE, "missing 'header'"),
    "header not an object": (("header",), "1.0", "header: expected an object"),
    "missing report id": (("header", "report_id"), DELETE, "missing 'report_id'"),
    "report id zero": (("header", "report_id"), 0, "below the minimum 1"),
    "report id negative": (("header", "report_id"), -3, "below the minimum 1"),
    "report id string": (("header", "report_id"), "5", "expected an integer, got str"),
    "report id float": (("header", "report_id"), 5.0, "expected an integer, got float"),
    "report id bool": (("header", "report_id"), True, "expected an integer, got bool"),
    "report id huge": (("header", "report_id"), 2**64, "above the maximum"),
    "version 2.0": (("header", "version"), "2.0", 'expected "1.0"'),
    "version number": (("header", "version"), 1.0, "expected a string"),
    "missing version": (("header", "version"), DELETE, "missing 'version'"),
    "negative count": (NS + ("bytes_in",), -1, "below the minimum 0"),
    "NaN count": (NS + ("bytes_out",), float("nan"), "expected an integer, got float"),
    "infinite count": (NS + ("packets_in",), float("inf"), "expected an integer"),
    "bool count": (NS + ("packets_out",), False, "expected an integer, got bool"),
    "negative total": (TCP + ("total",), -1, "below the minimum 0"),
    "port too big": (TCP + ("ports", 0, "port"), 65536, "above the maximum 65535"),
    "port negative": (TCP + ("ports", 0, "port"), -1, "below the minimum 0"),
    "port missing": (TCP + ("ports", 0, "port"), DELETE, "missing 'port'"),
    "ports not a list": (TCP + ("ports",), {"port": 22}, "expected a list"),
    "port entry not an object": (TCP + ("ports",), [22], "expected an object, got int"),
    "interface number": (TCP + ("ports", 0, "interface"), 7, "expected a string"),
    "remote addr without port": (CONN + ("remote_addr",), "10.0.0.1", "ip:port"),
    "remote addr not an ip": (CONN + ("remote_addr",), "example.com:80", "ip:port"),
    "remote addr bad port": (CONN + ("remote_addr",), "10.0.0.1:70000", "ip:port"),
    "local port too big": (CONN + ("local_port",), 99999, "above the maximum"),
    "metrics not an object": (("metrics",), [1], "metrics: expected an object"),
    "custom bare object": (("custom_metrics", "temp"), {"number": 1}, "one-element array"),
    "custom two elements": (("custom_metrics", "temp"), [{"number": 1}, {"number": 2}], "one-element array"),
    "custom unknown type": (("custom_metrics", "temp"), [{"float": 1}], "exactly one of"),
    "custom two types": (("custom_metrics", "temp"), [{"number": 1, "string_list": []}], "exactly one of"),
    "custom NaN": (("custom_metrics", "temp"), [{"number": float("nan")}], "finite number"),
    "custom infinity": (("custom_metrics", "temp"), [{"number": float("-inf")}], "finite number"),
    "custom bool": (("custom_metrics", "temp"), [{"number": True}], "finite number"),
    "custom huge int": (("custom_metrics", "temp"), [{"number": 2**70}], "finite number"),
    "custom string number": (("custom_metrics", "temp"), [{"number": "1"}], "finite number"),
    "custom number list item": (("custom_metrics", "temp"), [{"number_list": [1, "x"]}], "finite number"),
    "custom string list item": (("custom_metrics", "temp"), [{"string_list": ["a", 1]}], "expected a string"),
    "custom ip list item": (("custom_metrics", "temp"), [{"ip_list": ["10.0.0.300"]}], "IP address"),
    "custom list not a list": (("custom_metrics", "temp"), [{"ip_list": "10.0.0.1"}], "expected a list"),
    "custom aws: name": (("custom_metrics", "aws:cpu"), [{"number": 1}], 'must not start with "aws:"'),
    "custom bad name": (("custom_metrics", "has space"), [{"number": 1}], "[a-zA-Z0-9:_-]"),
    "custom not an object": (("custom_metrics",), [1], "custom_metrics: expected an object"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejections(case):
    path, value, expected = REJECTED[case]
    doc = path if isinstance(path, list) else mutate(path, value)
    with pytest.raises(Invalid) as err:
        validate(doc)
    assert err.value.code == INVALID_PAYLOAD
    assert expected in err.value.message


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejections_after_the_same_shapes_passed_give_the_same_answer(case):
    """Well-formed shapes get a compiled check (validate._compile); a value it does not accept
    falls back to the full check, which words the problem exactly as before."""
    validate(good())  # every object shape of good() is now compiled
    validate(good())
    path, value, expected = REJECTED[case]
    doc = path if isinstance(path, list) else mutate(path, value)
    with pytest.raises(Invalid) as err:
        validate(doc)
    assert expected in err.value.message


def test_compiled_shapes_are_bounded_and_every_key_order_still_validates():
    fields = ("remote_addr", "local_port", "local_interface")
    orders = [(a, b, c) for a in fields for b in fields for c in fields if len({a, b, c}) == 3]
    short = {"remote_addr": "rad", "local_port": "lp", "local_interface": "li"}
    values = {"remote_addr": "192.0.2.1:443", "local_port": 5000, "local_interface": "eth0"}
    conns = []
    for order in orders:  # 6 orders x 8 mixes of long and short names: 48 shapes of one object
        for mix in range(8):
            conns.append({(short[f] if mix >> i & 1 else f): values[f] for i, f in enumerate(order)})
    doc = good()
    doc["metrics"]["tcp_connections"]["established_connections"]["connections"] = conns
    for _ in range(2):
        out = validate(doc)["metrics"]["tcp_connections"]["established_connections"]["connections"]
        assert out == [values] * len(conns)
    from garrison.detect.ingest import validate as module
    assert len(conns) == 48 and all(len(shapes) <= module._SHAPES_PER_FIELD for shapes in module._SHAPES.values())
    conns[-1] = {"rad": "192.0.2.1:443", "remote_addr": "192.0.2.1:443", "lp": 1}
    with pytest.raises(Invalid, match="given twice"):
        validate(doc)


def test_neither_metrics_nor_custom_metrics():
    for doc in ({"header": {"report_id": 1, "version": "1.0"}},
                {"header": {"report_id": 1, "version": "1.0"}, "metrics": {}, "custom_metrics": {}},
                {"header": {"report_id": 1, "version": "1.0"}, "metrics": {"unknown": 1}}):
        with pytest.raises(Invalid, match="needs metrics or custom_metrics"):
            validate(doc)


def test_same_field_in_both_name_forms_is_ambiguous():
    doc = good()
    doc["hed"] = {"rid": 6, "v": "1.0"}
    with pytest.raises(Invalid, match="given twice"):
        validate(doc)


def test_null_required_field_is_rejected():
    with pytest.raises(Invalid, match="expected an integer, got null"):
        validate(mutate(("header", "report_id"), None))


def test_validate_does_not_modify_its_input():
    doc = good()
    before = copy.deepcopy(doc)
    validate(doc)
    assert doc == before


def test_validator_covers_every_schema_kind():
    """A new kind in garrison.wire.schema must get a validator (else validate() would fail loudly)."""
    kinds = {field.kind for _, _, field in schema.walk()}
    assert kinds <= {"object", "list", "int", "str", "custom"}


def test_reports_built_by_our_agent_validate():
    built = report.build(7, network_stats={"bytes_in": 5}, custom_metrics={"uptime": 3, "ips": {"ip_list": ["::1"]}})
    for short in (False, True):
        payload = report.encode(built, "json", short_names=short)
        assert validate(json.loads(payload)) == built


def test_report_id_of_tolerates_anything():
    assert report_id_of({"hed": {"rid": 9}}) == 9
    assert report_id_of({"header": {"report_id": True}}) is None
    assert report_id_of({"header": {"report_id": -1}}) is None
    assert report_id_of([1]) is None
    assert report_id_of({"header": "x"}) is None


def test_a_refused_connection_deep_in_a_report_is_walked_once_not_once_per_level(monkeypatch):
    """A hostile device must not make a refused report cost many times an accepted one: the
    compiled check of each object level above a bad list entry used to fall back to the generic
    check, which walked the list again (16 walks of a 128 KB list 4 levels down)."""
    from garrison.detect.ingest import validate as module

    conns = [{"remote_addr": "192.0.2.1:443", "local_port": 5000} for _ in range(100)]
    doc = good()
    doc["metrics"]["tcp_connections"]["established_connections"]["connections"] = conns
    validate(doc)
    validate(doc)  # every shape of doc compiled
    conns[-1] = {"remote_addr": "192.0.2.1:443", "local_port": 70000}
    walks = []
    real = module._check_list
    monkeypatch.setattr(module, "_check_list", lambda d, f: walks.append(f.long) or real(d, f))
    with pytest.raises(Invalid) as err:
        validate(doc)
    assert err.value.message == (
        "metrics.tcp_connections.established_connections.connections[99].local_port: "
        "value is above the maximum 65535"
    )
    assert walks.count("connections") == 1
