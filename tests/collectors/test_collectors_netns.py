"""In network namespaces the tests create: both backends agree with `ss`, interfaces are
attributed to the addresses that own them, and traffic shows up in the interface counters."""
import json
import sys

from fixtures import NetNamespace

from collector_helpers import BACKENDS, normalize, probe, ss_endpoints

VETH_V4, VETH_V6 = "10.99.0.1", "fd00:99::1"


def _listening(records):
    return sorted((normalize(r["address"]), r["port"]) for r in records)


def _connections(records):
    return sorted(((normalize(c["local_address"]), c["local_port"]),
                   (normalize(c["remote_address"]), c["remote_port"])) for c in records)


def test_both_backends_agree_with_ss(netns):
    seen = probe(netns)
    assert seen["auto"] == "netlink"
    # ss prints a dual-stack "::" listener as "*" and keeps "::ffff:" prefixes; normalize() maps
    # both to what the collectors report
    want_tcp = ss_endpoints(seen["ss"]["tcp_listen"])
    want_udp = ss_endpoints(seen["ss"]["udp_listen"])
    want_est = ss_endpoints(seen["ss"]["established"], established=True)
    assert len(want_tcp) == 4 and len(want_udp) == 4 and len(want_est) == 6   # what the probe opened
    assert sum("::ffff:" in line for line in seen["ss"]["established"].splitlines()) == 1
    for backend in BACKENDS:
        got = seen[backend]
        assert _listening(got["tcp_listen"]) == want_tcp, backend
        assert _listening(got["udp_listen"]) == want_udp, backend
        assert _connections(got["established"]) == want_est, backend
        assert all(c["pid"] == seen["pid"] for c in got["established"])


def _veth(ns):
    ns.run("ip", "link", "add", "gv0", "type", "veth", "peer", "name", "gv1")
    ns.run("ip", "addr", "add", f"{VETH_V4}/24", "dev", "gv0")
    ns.run("ip", "addr", "add", f"{VETH_V6}/64", "dev", "gv0", "nodad")
    ns.run("ip", "link", "set", "gv0", "up")
    ns.run("ip", "link", "set", "gv1", "up")


def test_interface_attribution(netns):
    _veth(netns)
    seen = probe(netns, VETH_V4, VETH_V6)
    expected = {"127.0.0.1": "lo", "::1": "lo", "0.0.0.0": None, "::": None, VETH_V4: "gv0", VETH_V6: "gv0"}
    for backend in BACKENDS:
        for kind in ("tcp_listen", "udp_listen"):
            got = {r["address"]: r["interface"] for r in seen[backend][kind]}
            assert got == expected, (backend, kind)
        for conn in seen[backend]["established"]:
            assert conn["interface"] == expected[conn["local_address"]], (backend, conn)
        assert {c["local_address"] for c in seen[backend]["established"]} == {"127.0.0.1", "::1", VETH_V4, VETH_V6}


COUNT_TRAFFIC = """
import json, socket, sys
from garrison.collectors import interfaces
before = interfaces.counters()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(200):
        s.sendto(b"x" * 1000, ("10.99.0.2", 9))
after = interfaces.counters(include=["gv0", "lo"])
print(json.dumps({"before": {k: v.__dict__ for k, v in before.items()},
                  "after": {k: v.__dict__ for k, v in after.items()}}))
"""


def test_traffic_shows_in_counters(netns):
    peer = NetNamespace()
    try:
        netns.run("ip", "link", "add", "gv0", "type", "veth", "peer", "name", "gv1", "netns", peer.name)
        netns.run("ip", "addr", "add", f"{VETH_V4}/24", "dev", "gv0")
        netns.run("ip", "link", "set", "gv0", "up")
        peer.run("ip", "addr", "add", "10.99.0.2/24", "dev", "gv1")
        peer.run("ip", "link", "set", "gv1", "up")
        # a static neighbour entry: no ARP round trip, so no datagram waits (or drops) in a queue
        mac = json.loads(peer.run("ip", "-j", "link", "show", "gv1").stdout)[0]["address"]
        netns.run("ip", "neigh", "replace", "10.99.0.2", "lladdr", mac, "dev", "gv0")
        seen = json.loads(netns.run(sys.executable, "-c", COUNT_TRAFFIC, timeout=60).stdout)
        # peer's counters, read through its own /proc/net/dev
        received = json.loads(peer.run(sys.executable, "-c", "import json; from garrison.collectors import interfaces; "
                                       "print(json.dumps(interfaces.counters()['gv1'].__dict__))").stdout)
    finally:
        peer.close()
    assert set(seen["before"]) == {"gv0"}                # loopback excluded by default
    assert set(seen["after"]) == {"gv0", "lo"}           # an explicit choice includes it
    before, after = seen["before"]["gv0"], seen["after"]["gv0"]
    assert after["packets_out"] - before["packets_out"] >= 200
    assert after["bytes_out"] - before["bytes_out"] >= 200 * 1000
    assert received["packets_in"] >= 200 and received["bytes_in"] >= 200 * 1000
