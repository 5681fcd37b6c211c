"""Capture the fixtures in this directory from the live kernel (run once, as root):

    python3 tests/collectors/data/capture.py

Inside a fresh network namespace it opens known sockets, then saves /proc/net/{tcp,tcp6,udp,
udp6,dev} as text, the raw sock_diag and RTM_GETADDR reply datagrams as hex (netlink.json), and
what the socket API and `ip -j addr` say (expected.json: getsockname/getpeername, fstat inodes,
interface addresses), so the parsers are checked against other sources, not against themselves.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA_UDP = 150          # enough sockets for a multipart reply


def _record(sock, kind):
    local = sock.getsockname()
    entry = {"kind": kind, "family": 6 if sock.family == socket.AF_INET6 else 4,
             "address": local[0], "port": local[1], "inode": os.fstat(sock.fileno()).st_ino}
    if kind == "established":
        peer = sock.getpeername()
        entry.update(remote_address=peer[0], remote_port=peer[1])
    return entry


def _inside():
    from garrison.collectors import _netlink
    keep, expected = [], []

    def tcp_listener(family, address):
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6 and address == "::1":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, 0))
        sock.listen()
        keep.append(sock)
        expected.append(_record(sock, "tcp_listen"))
        return sock

    def udp(family, address, connect_to=None):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        keep.append(sock)
        if connect_to:
            sock.connect(connect_to)   # a connected UDP socket is not listening
        else:
            expected.append(_record(sock, "udp_listen"))
        return sock

    def connect(listener, address):
        client = socket.create_connection((address, listener.getsockname()[1]))
        server, _ = listener.accept()
        keep.extend((client, server))
        expected.extend((_record(client, "established"), _record(server, "established")))

    v4 = tcp_listener(socket.AF_INET, "127.0.0.1")
    v6 = tcp_listener(socket.AF_INET6, "::1")
    tcp_listener(socket.AF_INET, "0.0.0.0")
    dual = tcp_listener(socket.AF_INET6, "::")
    tcp_listener(socket.AF_INET6, "::ffff:127.0.0.1")
    connect(v4, "127.0.0.1")
    connect(v6, "::1")
    connect(dual, "127.0.0.1")      # the server side is IPv4-mapped
    udp(socket.AF_INET, "127.0.0.1")
    udp(socket.AF_INET6, "::1")
    udp(socket.AF_INET, "0.0.0.0")
    udp(socket.AF_INET6, "::")
    udp(socket.AF_INET, "127.0.0.1", connect_to=("127.0.0.1", 9))
    for _ in range(EXTRA_UDP):
        udp(socket.AF_INET, "127.0.0.1")
    # some traffic, so /proc/net/dev has non-zero counters
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _ in range(3):
            probe.sendto(b"x" * 100, ("10.77.0.2", 9))   # ARP requests leave veth-cap
            time.sleep(0.3)

    for name in ("tcp", "tcp6", "udp", "udp6", "dev"):
        shutil.copyfile(f"/proc/net/{name}", HERE / f"proc/net/{name}")
    diag = _netlink.SockDiag()
    queries = {"tcp-listen": ("tcp", 1 << _netlink.TCP_LISTEN),
               "tcp-established": ("tcp", 1 << _netlink.TCP_ESTABLISHED),
               "udp-unconnected": ("udp", 1 << _netlink.TCP_CLOSE)}
    replies = {}
    for key, (protocol, states) in queries.items():
        for af, family in _netlink.FAMILIES:
            replies[f"{key}-{family}"] = [c.hex() for c in diag.capture(protocol, states, af)]
    replies["addresses"] = [c.hex() for c in _netlink.capture(_netlink.route_socket, _netlink.address_request(1))]
    links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    addresses = sorted([link["ifindex"], a["local"]] for link in links for a in link["addr_info"])
    (HERE / "netlink.json").write_text(json.dumps(
        {"byteorder": sys.byteorder, "seq": 1, "replies": replies}, indent=1) + "\n")
    (HERE / "expected.json").write_text(json.dumps(
        {"byteorder": sys.byteorder, "sockets": expected, "addresses": addresses}, indent=1) + "\n")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        _inside()
        return
    (HERE / "proc/net").mkdir(parents=True, exist_ok=True)
    ns = f"gt-capture-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def run(*argv):
            subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "veth-cap", "type", "veth", "peer", "name", "veth-peer")
        run("ip", "addr", "add", "10.77.0.1/24", "dev", "veth-cap")
        run("ip", "addr", "add", "fd00:77::1/64", "dev", "veth-cap", "nodad")
        run("ip", "addr", "add", "10.77.1.1", "peer", "10.77.1.2", "dev", "veth-peer")  # IFA_LOCAL != IFA_ADDRESS
        run("ip", "link", "set", "veth-cap", "up")
        run("ip", "link", "set", "veth-peer", "up")
        run(sys.executable, __file__, "--inside")
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


if __name__ == "__main__":
    main()
