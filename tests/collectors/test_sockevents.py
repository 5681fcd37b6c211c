"""The socket-event collector: the kernel's destroy broadcasts, live in a namespace of our own, and
the parser and bounds on built messages."""
import json
import logging
import socket
import struct
import sys
import textwrap

from garrison.collectors import sockevents

# Inside a fresh namespace: start the collector, make a short connection with traffic, a listener
# that lives 50 ms, a UDP service socket and a UDP client query, then print the interval.
LIVE = textwrap.dedent("""
    import json, socket, time
    from garrison.collectors.sockevents import SocketEvents
    events = SocketEvents(max_entries=16)
    assert events.start()
    server = socket.socket(); server.bind(("127.0.0.1", 4444)); server.listen()
    client = socket.create_connection(("127.0.0.1", 4444)); peer, _ = server.accept()
    client.sendall(b"x" * 5000); got = 0
    while got < 5000: got += len(peer.recv(8192))
    peer.sendall(b"y" * 700); got = 0
    while got < 700: got += len(client.recv(8192))
    client.close(); peer.close(); time.sleep(0.05); server.close()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); udp.bind(("::", 5683)); udp.close()
    query = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); query.sendto(b"?", ("127.0.0.1", 9)); query.close()
    six = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); six.setblocking(False)
    try: six.connect(("::1", 7))
    except OSError: pass
    time.sleep(0.2); six.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.1)
        with events._lock:
            if events._interval.events >= 6: break
    print(json.dumps(events.drain())); print(json.dumps(events.drain())); events.stop()
""")


def test_destroyed_sockets_are_summarised_live(netns):
    done = netns.run(sys.executable, "-c", LIVE, cwd=str(_root()), timeout=30)
    first, second = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert first["available"] and first["lost"] == 0 and first["overflow"] == 0
    by_remote = {c["remote_address"]: c for c in first["connections"]}
    # both ends of the loopback connection share the remote address 127.0.0.1: one entry, two sockets
    loop = by_remote["127.0.0.1"]
    assert loop["protocol"] == "tcp" and loop["count"] == 2
    # tcp_info's bytes, both sides summed (the kernel counts SYN and FIN as a byte of sequence space)
    assert 5700 <= loop["bytes_in"] <= 5704 and 5700 <= loop["bytes_out"] <= 5704
    assert by_remote["::1"]["protocol"] == "tcp" and by_remote["::1"]["remote_port"] == 7
    listeners = {(entry["protocol"], entry["port"]) for entry in first["listeners"]}
    assert ("tcp", 4444) in listeners and ("udp", 5683) in listeners
    # the UDP client's ephemeral port is not a listener
    assert all(entry["port"] in (4444, 5683) for entry in first["listeners"]), first["listeners"]
    assert first["events"] >= 6
    # drain() resets: the next interval starts empty
    assert second["connections"] == [] and second["listeners"] == [] and second["events"] == 0


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parents[2]


def _message(protocol=socket.IPPROTO_TCP, family=socket.AF_INET, state=7, local=("10.0.0.2", 40000),
             remote=("203.0.113.9", 443), bytes_in=0, bytes_out=0, with_info=True):
    af = family
    src = socket.inet_pton(af, local[0]).ljust(16, b"\0")
    dst = socket.inet_pton(af, remote[0]).ljust(16, b"\0")
    body = struct.pack("=BBBBHH16s16sI8sIIIII", af, state, 0, 0, socket.htons(local[1]), socket.htons(remote[1]),
                       src, dst, 0, b"\0" * 8, 0, 0, 0, 0, 0)
    assert len(body) == 72
    attrs = struct.pack("=HHB3x", 5, sockevents.INET_DIAG_PROTOCOL, protocol)
    if with_info:
        info = bytearray(232)
        struct.pack_into("=QQ", info, 120, bytes_out, bytes_in)
        attrs += struct.pack("=HH", 4 + len(info), sockevents.INET_DIAG_INFO) + bytes(info)
    length = 16 + len(body) + len(attrs)
    return struct.pack("=IHHII", length, 20, 0, 0, 0) + body + attrs


def test_parser_reads_addresses_ports_protocol_and_bytes():
    chunk = _message(bytes_in=123, bytes_out=456) + _message(
        protocol=socket.IPPROTO_UDP, family=socket.AF_INET6, local=("::ffff:10.0.0.2", 123), remote=("::", 0),
        with_info=False)
    assert sockevents.parse_events(chunk) == [
        ("tcp", 7, "10.0.0.2", 40000, "203.0.113.9", 443, 123, 456),
        ("udp", 7, "10.0.0.2", 123, "::", 0, 0, 0),          # IPv4-mapped shown as IPv4
    ]


def test_parser_skips_truncated_and_foreign_messages():
    good = _message()
    assert sockevents.parse_events(good[:50]) == []                      # shorter than one message
    lying = struct.pack("=I", 10_000) + good[4:]                          # length past the datagram
    assert sockevents.parse_events(lying) == []
    foreign = good[:4] + struct.pack("=H", 3) + good[6:]                  # NLMSG_DONE, not an event
    assert sockevents.parse_events(foreign + good) == [sockevents.parse_events(good)[0]]
    no_protocol = _message()[:88]                                         # attributes cut away
    no_protocol = struct.pack("=I", 88) + no_protocol[4:]
    assert sockevents.parse_events(no_protocol) == []


def test_tables_are_bounded_and_overflow_is_counted():
    events = sockevents.SocketEvents(max_entries=10)
    for i in range(1000):                          # a storm: 1000 distinct destinations, 300 listeners
        events.feed(_message(remote=(f"198.51.{i // 256}.{i % 256}", 80), bytes_in=1))
    for port in range(1000, 1300):
        events.feed(_message(local=("0.0.0.0", port), remote=("0.0.0.0", 0)))
    for _ in range(5):                             # a destination already kept still counts
        events.feed(_message(remote=("198.51.0.0", 80), bytes_in=10))
    interval = events.drain()
    assert len(interval["connections"]) == 10 and len(interval["listeners"]) == 10
    assert interval["events"] == 1305
    assert interval["overflow"] == 990 + 290
    top = interval["connections"][0]               # sorted by bytes: the busiest first
    assert top["remote_address"] == "198.51.0.0" and top["count"] == 6 and top["bytes_in"] == 51


def test_udp_clients_on_ephemeral_ports_are_not_listeners():
    events = sockevents.SocketEvents()
    events.ephemeral = (32768, 60999)
    events.feed(_message(protocol=socket.IPPROTO_UDP, local=("0.0.0.0", 45000), remote=("0.0.0.0", 0)))
    events.feed(_message(protocol=socket.IPPROTO_UDP, local=("0.0.0.0", 5353), remote=("0.0.0.0", 0)))
    events.feed(_message(protocol=socket.IPPROTO_TCP, local=("0.0.0.0", 45001), remote=("0.0.0.0", 0)))
    events.feed(_message(protocol=socket.IPPROTO_TCP, local=("0.0.0.0", 0), remote=("0.0.0.0", 0)))
    ports = [(entry["protocol"], entry["port"]) for entry in events.drain()["listeners"]]
    assert ports == [("tcp", 45001), ("udp", 5353)]


def test_refused_groups_are_reported_once_and_leave_the_agent_running(caplog):
    def refused():
        raise PermissionError(1, "Operation not permitted")
    events = sockevents.SocketEvents(socket_factory=refused)
    with caplog.at_level(logging.WARNING, logger="garrison.collectors.sockevents"):
        assert events.start() is False
        assert events.start() is False
    assert [r.getMessage() for r in caplog.records] == [
        "socket events unavailable ([Errno 1] Operation not permitted): reports carry snapshots only"]
    interval = events.drain()
    assert interval["available"] is False and interval["connections"] == []
    events.stop()


def test_a_refused_connect_is_a_connection_attempt_not_a_listener():
    # the kernel's tcp_disconnect() after a refused blocking connect() zeroes the peer's port and the
    # local address but keeps the peer's address (seen live on 6.x)
    events = sockevents.SocketEvents()
    events.feed(_message(local=("0.0.0.0", 36092), remote=("203.0.113.66", 0)))
    interval = events.drain()
    assert interval["listeners"] == []
    assert [(c["remote_address"], c["remote_port"]) for c in interval["connections"]] == [("203.0.113.66", 0)]


def test_a_socketpair_emulated_over_loopback_is_not_a_listener():
    # paho-mqtt's _socketpair_compat(): bind 127.0.0.1:0, listen, connect, accept, close the listener
    events = sockevents.SocketEvents()
    events.ephemeral = (32768, 60999)
    events.feed(_message(local=("127.0.0.1", 35799), remote=("0.0.0.0", 0)))
    events.feed(_message(family=socket.AF_INET6, local=("::1", 40000), remote=("::", 0)))
    events.feed(_message(local=("127.0.0.1", 8080), remote=("0.0.0.0", 0)))          # a real loopback service
    events.feed(_message(local=("10.0.0.2", 35800), remote=("0.0.0.0", 0)))          # reachable: kept
    assert [(e["address"], e["port"]) for e in events.drain()["listeners"]] == [("127.0.0.1", 8080),
                                                                               ("10.0.0.2", 35800)]
