"""Run inside a network namespace: open known sockets, then print as JSON what each backend and
`ss` see from there, and what the socket API itself says about those sockets.

    ip netns exec NS python3 netns_probe.py [extra bind address ...]

Listeners (TCP and UDP) go on 127.0.0.1, ::1, 0.0.0.0, :: (dual-stack) and every extra address;
a TCP connection is made to each specific-address listener and, over IPv4, to the dual-stack one;
one connected UDP socket is added (it must not count as listening).
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys

from garrison.collectors import processes, sockets


def family_of(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def describe(sock, kind):
    local = sock.getsockname()
    entry = {"kind": kind, "family": 6 if sock.family == socket.AF_INET6 else 4,
             "address": local[0], "port": local[1], "inode": os.fstat(sock.fileno()).st_ino}
    if kind == "established":
        entry["remote_address"], entry["remote_port"] = sock.getpeername()[:2]
    return entry


def open_sockets(addresses):
    keep, known = [], []
    for address in addresses:
        listener = socket.socket(family_of(address), socket.SOCK_STREAM)
        if address == "::":
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual-stack
        listener.bind((address, 0))
        listener.listen()
        keep.append(listener)
        known.append(describe(listener, "tcp_listen"))
        # a connection to each specific address, and one over IPv4 to the dual-stack listener
        # (its server side then has IPv4-mapped addresses)
        target = {"0.0.0.0": None, "::": "127.0.0.1"}.get(address, address)
        if target:
            client = socket.create_connection((target, listener.getsockname()[1]))
            server, _ = listener.accept()
            keep += [client, server]
            known += [describe(client, "established"), describe(server, "established")]
        datagram = socket.socket(family_of(address), socket.SOCK_DGRAM)
        datagram.bind((address, 0))
        keep.append(datagram)
        known.append(describe(datagram, "udp_listen"))
    connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected.bind(("127.0.0.1", 0))
    connected.connect(("127.0.0.1", 9))
    keep.append(connected)
    known.append(describe(connected, "udp_connected"))
    return keep, known


def ss(*argv):
    return subprocess.run(["ss", "-H", *argv], capture_output=True, text=True, check=True).stdout


def main():
    keep, known = open_sockets(["127.0.0.1", "::1", "0.0.0.0", "::"] + sys.argv[1:])
    out = {"pid": os.getpid(), "sockets": known, "auto": sockets.backend_name("auto"),
           "ss": {"tcp_listen": ss("-tln"), "udp_listen": ss("-uln"),
                  "established": ss("-tn", "state", "established")}}
    for backend in ("netlink", "procfs"):
        out[backend] = {
            "tcp_listen": [dataclasses.asdict(s) for s in sockets.listening("tcp", backend)],
            "udp_listen": [dataclasses.asdict(s) for s in sockets.listening("udp", backend)],
            "established": [dataclasses.asdict(c) for c in processes.attach(sockets.established(backend))],
        }
    print(json.dumps(out))
    for sock in keep:
        sock.close()


if __name__ == "__main__":
    main()
