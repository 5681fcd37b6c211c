"""Validate a decoded Device Defender report and normalize it to long names.

Every check is derived from `garrison.wire.schema` (kinds, bounds, required fields); nothing about the
report's fields is declared here. Liberal where real agents differ (long and short keys mixed at
any level, since-boot totals in a first report, an interface of "0.0.0.0" or null, duplicate
entries, floats in custom numbers); strict where AWS rejects (missing header, bad report id,
version other than "1.0", no metrics at all, a custom metric that is not a one-element array,
negative counts, ports out of range, wrong types, NaN/Infinity, booleans for integers, custom
metric names starting with "aws:").

Keys the schema does not declare are dropped, so the engine only ever sees declared fields.
"""

import math
from typing import Any, Dict, List

from garrison.wire import names, schema
from garrison.wire.limits import MAX_STRING_CHARS as _MAX_STRING
from garrison.wire.replies import INVALID_PAYLOAD  # noqa: F401  (AWS's code for any malformed report)

# The value rules are the wire contract's, shared with the agent, so what it sends passes here.
from garrison.wire.values import is_int as _is_int, is_ip as _is_ip, is_number as _is_number, is_text as _is_text


class Invalid(ValueError):
    """A report the engine rejects: `code` is the reply's ErrorCode, `message` its ErrorMessage."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Bad(Exception):
    """A problem found deep in the report; each level on the way out adds its key to `where`,
    so paths are only built when something is wrong (validation of good reports stays fast)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem
        self.where: List[str] = []

    def path(self) -> str:
        out = ""
        for part in reversed(self.where):
            out += part if part.startswith("[") or not out else "." + part
        return out


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_int(value: Any, field: schema.Field) -> int:
    if not _is_int(value):
        raise _Bad(f"expected an integer, got {_type_name(value)}")
    if field.minimum is not None and value < field.minimum:
        # no value in the message: a huge one (a CBOR bignum) would not even format
        raise _Bad(f"value is below the minimum {field.minimum}")
    if field.maximum is not None and value > field.maximum:
        raise _Bad(f"value is above the maximum {field.maximum}")
    return value


def _check_endpoint(value: str) -> None:
    """ "ip:port", IPv6 as "[addr]:port" (what AWS's agents send)."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (sep and port.isdigit() and len(port) <= 5 and int(port) <= schema.MAX_PORT and _is_ip(host)):
        raise _Bad('expected "ip:port" (IPv6 as "[addr]:port")')


def _check_str(value: Any, field: schema.Field) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {_type_name(value)}")
    if not _is_text(value):
        raise _Bad(f"expected valid Unicode text of at most {_MAX_STRING} characters")
    if field.long == "remote_addr":
        _check_endpoint(value)
    if field.choices and value not in field.choices:
        raise _Bad(f"expected one of {', '.join(field.choices)}")
    return value


_CHILDREN: Dict[int, Dict[str, schema.Field]] = {}


def _children(field: schema.Field) -> Dict[str, schema.Field]:
    """{long or short name: child field}, built once per schema field."""
    table = _CHILDREN.get(id(field))
    if table is None:
        table = {name: sub for sub in field.children for name in (sub.long, sub.short)}
        _CHILDREN[id(field)] = table
    return table


_PLAIN_TEXT, _ENDPOINT = "text", "endpoint"
_SPECS: Dict[int, Any] = {}
_GOOD_ENDPOINTS: set = set()  # addresses already found valid: devices report the same ones again
_GOOD_ENDPOINTS_MAX = 65536  # bounded: cleared when full


def _spec(field: schema.Field):
    """({name: (long, fast kind, low, high, sub)}, required long names), built once per field:
    what the inline fast path of _check_object needs without attribute lookups."""
    spec = _SPECS.get(id(field))
    if spec is None:
        table = {}
        for name, sub in _children(field).items():
            fast = sub.kind
            if sub.kind == "str":  # (a field with choices takes the full check)
                fast = _ENDPOINT if sub.long == "remote_addr" else "str" if sub.choices else _PLAIN_TEXT
            low = sub.minimum if sub.minimum is not None else -math.inf
            high = sub.maximum if sub.maximum is not None else math.inf
            table[name] = (sub.long, fast, low, high, sub)
        spec = _SPECS[id(field)] = (table, tuple(sub.long for sub in field.children if sub.required))
    return spec


# Compiled checks, one per (schema object, key order): agents write every entry of a list with
# the same keys in the same order, so a straight-line function per shape checks a well-formed
# entry without the generic loop (a gateway's report has dozens of connection objects). It
# answers None for anything unusual, and the generic code below then does the work and words
# the problem; a nested object or list it refuses raises as the generic code would (falling
# back would walk it again at each level above: 16 times for a connection 4 levels down).
# Only shapes of declared keys are compiled, at most _SHAPES_PER_FIELD per field, so hostile
# key orders cost a bounded number of compilations (and at worst leave the shapes that come
# later to the generic check: the speed validation had before).
_SHAPES: Dict[int, Dict[tuple, Any]] = {}
_SHAPES_PER_FIELD = 16


def _compiled(field: schema.Field, doc: Dict[Any, Any]) -> Any:
    shapes = _SHAPES.setdefault(id(field), {})
    keys = tuple(doc)
    check = shapes.get(keys)
    if check is None and len(shapes) < _SHAPES_PER_FIELD:
        check = shapes[keys] = _compile(field, keys)
    return check or None


def _compile(field: schema.Field, keys: tuple) -> Any:
    """The check of one shape, or False (this shape always takes the generic path)."""
    table, required = _spec(field)
    namespace: Dict[str, Any] = {"GOOD": _GOOD_ENDPOINTS, "MAX": _MAX_STRING, "check_any": _check, "Bad": _Bad}
    seen, tests, nested, out = set(), [], [], []
    for i, key in enumerate(keys):
        entry = table.get(key) if type(key) is str else None
        if entry is None or entry[0] in seen:
            return False  # undeclared keys (any number of shapes) or a field given twice
        long, fast, low, high, sub = entry
        seen.add(long)
        v = f"v{i}"
        namespace[f"LOW{i}"], namespace[f"HIGH{i}"], namespace[f"SUB{i}"] = low, high, sub
        if fast == "int":
            tests.append(f"type({v}) is int and LOW{i} <= {v} <= HIGH{i}")
        elif fast is _PLAIN_TEXT:
            tests.append(f"type({v}) is str and len({v}) <= MAX and {v}.isascii()")
        elif fast is _ENDPOINT:
            tests.append(f"type({v}) is str and {v} in GOOD")
        elif sub.kind in ("object", "list", "custom"):
            tests.append(f"{v} is not None")
            nested.append((v, i, long))
        else:
            return False  # text with choices: the generic check
        out.append(f"{long!r}: {v}")
    if not set(required) <= seen:
        return False
    lines = ["def check(doc):"]
    lines += [f"    v{i} = doc[{key!r}]" for i, key in enumerate(keys)]
    lines.append(f"    if not ({' and '.join(tests) or 'True'}):")
    lines.append("        return None")
    for v, i, long in nested:
        lines += ["    try:", f"        {v} = check_any({v}, SUB{i})", "    except Bad as bad:"]
        lines += [f"        bad.where.append({long!r})", "        raise"]
    lines.append(f"    return {{{', '.join(out)}}}")
    exec("\n".join(lines), namespace)  # noqa: S102  (code built from the schema's own names only)
    return namespace["check"]


def _check_object(doc: Any, field: schema.Field) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise _Bad(f"expected an object, got {_type_name(doc)}")
    if type(doc) is dict:
        check = _compiled(field, doc)
        if check is not None:
            fast = check(doc)
            if fast is not None:
                return fast
    table, required = _spec(field)
    out: Dict[str, Any] = {}
    for key, value in doc.items():
        entry = table.get(key) if type(key) is str else None
        if entry is None:
            continue  # undeclared key: ignored
        long, fast, low, high, sub = entry
        # the common cases inline, no call (calls cost in CPython; a gateway's report has
        # hundreds of fields): an in-range plain int, short ASCII text, a known-good address
        if long not in out:
            if fast == "int":
                if type(value) is int and low <= value <= high:
                    out[long] = value
                    continue
            elif fast is _PLAIN_TEXT:
                if type(value) is str and len(value) <= _MAX_STRING and value.isascii():
                    out[long] = value
                    continue
            elif fast is _ENDPOINT and type(value) is str and value in _GOOD_ENDPOINTS:
                out[long] = value
                continue
        try:
            if long in out:
                raise _Bad(f"given twice ({long!r} and {sub.short!r})")
            if value is None and not sub.required:
                continue  # null optional field (e.g. "interface": null) means absent
            kind = sub.kind
            if kind == "int":
                out[long] = _check_int(value, sub)
            elif kind == "str":
                out[long] = _check_str(value, sub)
                if fast is _ENDPOINT:
                    if len(_GOOD_ENDPOINTS) >= _GOOD_ENDPOINTS_MAX:
                        _GOOD_ENDPOINTS.clear()
                    _GOOD_ENDPOINTS.add(value)
            else:
                out[long] = _check(value, sub)
        except _Bad as bad:
            bad.where.append(long)
            raise
    for long in required:
        if long not in out:
            sub = table[long][4]
            raise _Bad(f"missing {sub.long!r} ({sub.short!r})")
    return out


def _check_list(doc: Any, field: schema.Field) -> List[Dict[str, Any]]:
    if not isinstance(doc, list):
        raise _Bad(f"expected a list, got {_type_name(doc)}")
    if field.max_items is not None and len(doc) > field.max_items:
        raise _Bad(f"at most {field.max_items} entries, got {len(doc)}")
    out = []
    shapes = _SHAPES.get(id(field), {})
    for i, entry in enumerate(doc):
        # the compiled check of the entry's shape inline (the list's hot loop); else the full one
        check = shapes.get(tuple(entry)) if type(entry) is dict else None
        try:
            checked = check(entry) if check else None
            out.append(checked if checked is not None else _check_object(entry, field))
        except _Bad as bad:
            bad.where.append(f"[{i}]")
            raise
    return out


def _check_custom_item(kind: str, item: Any) -> None:
    if kind == "number_list":
        if not _is_number(item):
            raise _Bad("expected a finite number")
    elif not _is_text(item):
        raise _Bad("expected a string")
    elif kind == "ip_list" and not _is_ip(item):
        raise _Bad("expected an IP address")


def _check_custom_value(kind: str, value: Any) -> Any:
    if kind == "number":
        if not _is_number(value):
            raise _Bad("expected a finite number")
        return value
    if not isinstance(value, list):
        raise _Bad(f"expected a list, got {_type_name(value)}")
    for i, item in enumerate(value):
        try:
            _check_custom_item(kind, item)
        except _Bad as bad:
            bad.where.append(f"[{i}]")
            raise
    return list(value)


def _check_custom(doc: Any) -> Dict[str, List[Dict[str, Any]]]:
    if not isinstance(doc, dict):
        raise _Bad(f"expected an object, got {_type_name(doc)}")
    out = {}
    for name, value in doc.items():
        if not isinstance(name, str) or not names.NAME.valid(name):
            raise _Bad(names.CUSTOM_METRIC.text)
        try:
            if not names.CUSTOM_METRIC.valid(name):  # the reserved "aws:" prefix
                raise _Bad(names.CUSTOM_METRIC.text)
            if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict):
                raise _Bad('expected a one-element array such as [{"number": 1}]')
            entry = value[0]
            kind = next(iter(entry), None)
            if len(entry) != 1 or kind not in schema.CUSTOM_METRIC_TYPES:
                raise _Bad(f"expected exactly one of {', '.join(schema.CUSTOM_METRIC_TYPES)}")
            try:
                out[name] = [{kind: _check_custom_value(kind, entry[kind])}]
            except _Bad as bad:
                bad.where += [kind, "[0]"]
                raise
        except _Bad as bad:
            bad.where.append(name)
            raise
    return out


def _check(value: Any, field: schema.Field) -> Any:
    kind = field.kind
    if kind == "int":
        return _check_int(value, field)
    if kind == "str":
        return _check_str(value, field)
    if kind == "object":
        return _check_object(value, field)
    if kind == "list":
        return _check_list(value, field)
    if kind == "custom":
        return _check_custom(value)
    raise AssertionError(f"schema kind {kind!r} has no validator")  # a schema change


def validate(doc: Any) -> Dict[str, Any]:
    """The report in long names, or raise `Invalid(code, message)`."""
    try:
        report = _check_object(doc, schema.REPORT)
        if report["header"]["version"] != schema.VERSION:
            bad = _Bad(f'expected "{schema.VERSION}"')
            bad.where = ["version", "header"]
            raise bad
        if not report.get("metrics") and not report.get("custom_metrics"):
            raise _Bad("a report needs metrics or custom_metrics")
    except _Bad as bad:
        path = bad.path()
        raise Invalid(INVALID_PAYLOAD, f"{path}: {bad.problem}" if path else bad.problem) from None
    return report


def report_id_of(doc: Any) -> Any:
    """The report id of a decoded (not necessarily valid) report, or None: for the reply."""
    if not isinstance(doc, dict):
        return None
    for header_key in ("header", "hed"):
        header = doc.get(header_key)
        if isinstance(header, dict):
            for key in ("report_id", "rid"):
                rid: Any = header.get(key)
                if _is_int(rid) and 0 < rid <= schema.MAX_INT:
                    return rid
    return None
