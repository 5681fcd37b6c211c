"""Parsers on captured kernel output: /proc/net text and sock_diag reply bytes (see data/capture.py).

The expectations come from the socket API at capture time (getsockname, getpeername, fstat), not
from the parsers themselves.
"""
import errno
import json
import socket
import struct
import sys

import pytest

from garrison.collectors import _netlink, _procfs, interfaces, sockets
from garrison.collectors.base import InterfaceCounters

from collector_helpers import DATA

EXPECTED = json.loads((DATA / "expected.json").read_text())
NETLINK = json.loads((DATA / "netlink.json").read_text())
LISTEN_TCP = 1 << _netlink.TCP_LISTEN
ESTABLISHED = 1 << _netlink.TCP_ESTABLISHED
UNCONNECTED = 1 << _netlink.TCP_CLOSE


def expected(kind):
    """Raw tuples (family, local, port, remote, rport, inode) the captured sockets must give."""
    rows = []
    for s in EXPECTED["sockets"]:
        if s["kind"] != kind:
            continue
        wildcard = "::" if s["family"] == 6 else "0.0.0.0"
        rows.append((s["family"], s["address"], s["port"], s.get("remote_address", wildcard),
                     s.get("remote_port", 0), s["inode"]))
    return sorted(rows)


def netlink_rows(key):
    out = []
    for family in (4, 6):
        chunks = [bytes.fromhex(c) for c in NETLINK["replies"][f"{key}-{family}"]]
        _netlink.parse(chunks, NETLINK["seq"], out)
    return sorted(out)


def procfs_rows(protocol, states):
    return sorted(_procfs.ProcNet(str(DATA / "proc"), byteorder=EXPECTED["byteorder"]).query(protocol, states))


needs_capture_byteorder = pytest.mark.skipif(
    sys.byteorder != NETLINK["byteorder"], reason="netlink headers are in the capturing host's byte order")


@needs_capture_byteorder
@pytest.mark.parametrize("key, kind", [("tcp-listen", "tcp_listen"), ("tcp-established", "established"),
                                       ("udp-unconnected", "udp_listen")])
def test_netlink_parser_on_captured_replies(key, kind):
    assert netlink_rows(key) == expected(kind)


def test_captured_udp_reply_is_multipart_and_complete():
    chunks = NETLINK["replies"]["udp-unconnected-4"]
    assert len(chunks) > 2                       # several datagrams before NLMSG_DONE
    assert len(expected("udp_listen")) > 150     # all of them parsed (checked above)


@pytest.mark.parametrize("protocol, states, kind", [("tcp", LISTEN_TCP, "tcp_listen"),
                                                    ("tcp", ESTABLISHED, "established"),
                                                    ("udp", UNCONNECTED, "udp_listen")])
def test_procfs_parser_on_captured_files(protocol, states, kind):
    assert procfs_rows(protocol, states) == expected(kind)


def test_captured_fixtures_cover_mapped_v6_and_wildcards():
    rows = expected("tcp_listen") + expected("established")
    addresses = {r[1] for r in rows}
    assert {"127.0.0.1", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"} <= addresses


def test_connected_udp_socket_is_not_listening():
    every = sorted(_procfs.ProcNet(str(DATA / "proc"), byteorder=EXPECTED["byteorder"]).query("udp", 0xFFF))
    listening = procfs_rows("udp", UNCONNECTED)
    connected = [r for r in every if r not in listening]
    assert len(connected) == 1 and connected[0][3:5] == ("127.0.0.1", 9)


def test_procfs_parser_honours_byte_order():
    line = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0  0 42 1"
    little, big = [], []
    _procfs.parse([line], 4, LISTEN_TCP, little, "little")
    _procfs.parse([line], 4, LISTEN_TCP, big, "big")
    assert little == [(4, "127.0.0.1", 8080, "0.0.0.0", 0, 42)]
    assert big[0][1] == "1.0.0.127"


def test_procfs_without_ipv6_files(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text((DATA / "proc" / "net" / "tcp").read_text())
    rows = _procfs.ProcNet(str(tmp_path), byteorder=EXPECTED["byteorder"]).query("tcp", LISTEN_TCP)
    assert {r[0] for r in rows} == {4} and rows


def _message(kind, seq, payload=b"", flags=0):
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def test_netlink_error_is_raised_with_errno():
    reply = _message(_netlink.NLMSG_ERROR, 7, struct.pack("=i", -errno.EPERM) + _message(20, 7))
    with pytest.raises(_netlink.NetlinkError) as caught:
        _netlink.parse([reply], 7, [])
    assert caught.value.errno == errno.EPERM


def test_netlink_done_carrying_an_error_is_raised():
    with pytest.raises(_netlink.NetlinkError) as caught:
        _netlink.parse([_message(_netlink.NLMSG_DONE, 3, struct.pack("=i", -errno.EINTR))], 3, [])
    assert caught.value.errno == errno.EINTR


def test_netlink_reply_without_done_is_an_error():
    chunks = [bytes.fromhex(NETLINK["replies"]["tcp-listen-4"][0])]   # the DONE datagram is missing
    with pytest.raises(_netlink.NetlinkError, match="without NLMSG_DONE"):
        _netlink.parse(chunks, NETLINK["seq"], [])


@needs_capture_byteorder
def test_netlink_messages_of_another_request_are_skipped():
    stale = [bytes.fromhex(c) for c in NETLINK["replies"]["tcp-established-4"]][:-1]
    ours = [bytes.fromhex(c) for c in NETLINK["replies"]["tcp-listen-4"]]
    # re-number the stale reply's messages so they belong to an older request
    stale = [_renumber(chunk, 99) for chunk in stale]
    out = []
    _netlink.parse(stale + ours, NETLINK["seq"], out)
    assert sorted(r for r in out if r[0] == 4) == [r for r in expected("tcp_listen") if r[0] == 4]


def _renumber(chunk, seq):
    data, offset = bytearray(chunk), 0
    while offset < len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        struct.pack_into("=I", data, offset + 8, seq)
        offset += (length + 3) & ~3
    return bytes(data)


def test_netlink_request_layout():
    req = _netlink.request(5, socket.AF_INET6, socket.IPPROTO_UDP, UNCONNECTED)
    assert len(req) == 16 + 56                                  # nlmsghdr + inet_diag_req_v2
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, seq) == (72, _netlink.SOCK_DIAG_BY_FAMILY, 5)
    assert flags == _netlink.NLM_F_REQUEST | _netlink.NLM_F_DUMP
    family, protocol, ext, states = struct.unpack_from("=BBBxI", req, 16)
    assert (family, protocol, ext, states) == (socket.AF_INET6, socket.IPPROTO_UDP, 0, 1 << 7)


def test_dev_fixture_counters():
    every = interfaces.counters(include_loopback=True, root=str(DATA / "proc"))
    assert set(every) == {"lo", "veth-cap", "veth-peer"}
    assert every["veth-cap"] == InterfaceCounters("veth-cap", bytes_in=266, bytes_out=238,
                                                  packets_in=3, packets_out=3)
    assert every["lo"] == InterfaceCounters("lo", 576, 576, 9, 9)


def test_dev_loopback_excluded_by_default_and_include_chooses():
    root = str(DATA / "proc")
    assert set(interfaces.counters(root=root)) == {"veth-cap", "veth-peer"}
    assert set(interfaces.counters(include=["lo", "veth-cap", "nonexistent"], root=root)) == {"lo", "veth-cap"}


def test_dev_parser_with_long_names_glued_to_numbers():
    text = ("Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n"
            "averyverylongnam:123 4 0 0 0 0 0 0 567 8 0 0 0 0 0 0\n")
    assert interfaces.parse_dev(text)["averyverylongnam"] == InterfaceCounters("averyverylongnam", 123, 567, 4, 8)


def test_interface_lookup_rules():
    owners = {"127.0.0.1": "lo", "::1": "lo", "10.0.0.5": "eth0", "fe80::1": "eth0"}
    assert interfaces.interface_for("10.0.0.5", owners) == "eth0"
    assert interfaces.interface_for("127.0.0.53", owners) == "lo"     # all of 127/8 is loopback
    assert interfaces.interface_for("0.0.0.0", owners) is None
    assert interfaces.interface_for("::", owners) is None
    assert interfaces.interface_for("192.0.2.77", owners) is None


def test_mapped_addresses_are_unmapped():
    assert sockets._unmap(6, "::ffff:127.0.0.1") == (4, "127.0.0.1")
    assert sockets._unmap(6, "::1") == (6, "::1")
    assert sockets._unmap(4, "10.0.0.1") == (4, "10.0.0.1")


def test_record_factory_builds_equal_records():
    from garrison.collectors.base import Connection, ListeningSocket, record_factory
    listening = ListeningSocket("udp", 6, "::1", 53, "lo", 7, 100, "dnsd")
    assert record_factory(ListeningSocket)("udp", 6, "::1", 53, "lo", 7, 100, "dnsd") == listening
    conn = record_factory(Connection)(4, "10.0.0.2", 5000, "10.0.0.1", 443, "eth0", 9, None, None)
    assert conn == Connection(4, "10.0.0.2", 5000, "10.0.0.1", 443, "eth0", 9)
    assert hash(conn) == hash(Connection(4, "10.0.0.2", 5000, "10.0.0.1", 443, "eth0", 9))
    with pytest.raises(Exception):
        conn.local_port = 1          # still frozen


@needs_capture_byteorder
def test_address_parser_on_captured_reply():
    chunks = [bytes.fromhex(c) for c in NETLINK["replies"]["addresses"]]
    got = sorted(list(pair) for pair in _netlink.parse_addresses(chunks, NETLINK["seq"]))
    assert got == EXPECTED["addresses"]            # as `ip -j addr` listed them
    assert [2, "10.77.1.2"] not in got             # a point-to-point peer is not ours


def test_address_parser_raises_on_error():
    reply = _message(_netlink.NLMSG_ERROR, 1, struct.pack("=i", -errno.EACCES) + _message(22, 1))
    with pytest.raises(_netlink.NetlinkError) as caught:
        _netlink.parse_addresses([reply], 1)
    assert caught.value.errno == errno.EACCES


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4), st.integers(0, 3))
def test_netlink_parsers_fail_only_with_netlink_errors(chunks, seq):
    for parser in (lambda c: _netlink.parse(c, seq, []), lambda c: _netlink.parse_addresses(c, seq)):
        try:
            parser(chunks)
        except _netlink.NetlinkError:
            pass


REAL_LINES = [line for name in ("tcp", "tcp6") for line in (DATA / "proc" / "net" / name).read_text().splitlines()[1:]]


@st.composite
def damaged_lines(draw):
    """A real /proc/net line with one field replaced by junk (hex-ish or anything)."""
    fields = draw(st.sampled_from(REAL_LINES)).split()
    index = draw(st.integers(0, len(fields) - 1))
    fields[index] = draw(st.one_of(st.text("0123456789ABCDEFabcdef:x", max_size=40), st.text(max_size=10)))
    return " ".join(fields)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(damaged_lines(), st.text(max_size=200)), max_size=5))
def test_procfs_parser_fails_only_with_value_errors(lines):
    for family in (4, 6):
        try:
            _procfs.parse(lines, family, 0xFFFF, [])
        except ValueError as exc:
            assert "malformed line" in str(exc)
