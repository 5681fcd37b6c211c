"""Both socket backends against live sockets this test opens on loopback, plus owners and fallback."""
import logging
import os
import socket
import sys

import pytest

from garrison.agent.report import endpoint
from garrison.collectors import _netlink, interfaces, processes, sockets
from garrison.collectors.base import CollectorResult, Connection, ListeningSocket

from collector_helpers import BACKENDS


def inode(sock):
    return os.fstat(sock.fileno()).st_ino


@pytest.fixture(scope="module")
def live():
    """TCP listeners, UDP sockets and established pairs on loopback (v4, v6, wildcard, dual-stack)."""
    keep = {}

    def listener(name, family, address, kind=socket.SOCK_STREAM, v6only=None):
        sock = socket.socket(family, kind)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind((address, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        keep[name] = sock
        return sock

    listener("tcp4", socket.AF_INET, "127.0.0.1")
    listener("tcp6", socket.AF_INET6, "::1")
    listener("tcp4_any", socket.AF_INET, "0.0.0.0")
    listener("tcp6_any", socket.AF_INET6, "::", v6only=0)
    listener("udp4", socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM)
    listener("udp6", socket.AF_INET6, "::1", socket.SOCK_DGRAM)
    listener("udp4_any", socket.AF_INET, "0.0.0.0", socket.SOCK_DGRAM)
    listener("udp6_any", socket.AF_INET6, "::", socket.SOCK_DGRAM, v6only=1)
    connected = listener("udp_connected", socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM)
    connected.connect(("127.0.0.1", 9))
    for name, target, address in (("v4", "tcp4", "127.0.0.1"), ("v6", "tcp6", "::1"),
                                  ("mapped", "tcp6_any", "127.0.0.1")):
        keep[f"{name}_client"] = socket.create_connection((address, keep[target].getsockname()[1]))
        keep[f"{name}_server"] = keep[target].accept()[0]
    yield keep
    for sock in keep.values():
        sock.close()


def by_inode(records):
    return {r.inode: r for r in records}


@pytest.mark.parametrize("backend", BACKENDS)
def test_listening_tcp(live, backend):
    found = by_inode(sockets.listening("tcp", backend))
    port = lambda name: live[name].getsockname()[1]  # noqa: E731
    assert found[inode(live["tcp4"])] == ListeningSocket("tcp", 4, "127.0.0.1", port("tcp4"), "lo", inode(live["tcp4"]))
    assert found[inode(live["tcp6"])] == ListeningSocket("tcp", 6, "::1", port("tcp6"), "lo", inode(live["tcp6"]))
    assert found[inode(live["tcp4_any"])] == ListeningSocket("tcp", 4, "0.0.0.0", port("tcp4_any"), None,
                                                             inode(live["tcp4_any"]))
    assert found[inode(live["tcp6_any"])] == ListeningSocket("tcp", 6, "::", port("tcp6_any"), None,
                                                             inode(live["tcp6_any"]))
    # established sockets and UDP sockets are not listening TCP sockets
    assert inode(live["v4_server"]) not in found and inode(live["udp4"]) not in found


@pytest.mark.parametrize("backend", BACKENDS)
def test_listening_udp(live, backend):
    found = by_inode(sockets.listening("udp", backend))
    for name, family, address, interface in (("udp4", 4, "127.0.0.1", "lo"), ("udp6", 6, "::1", "lo"),
                                             ("udp4_any", 4, "0.0.0.0", None), ("udp6_any", 6, "::", None)):
        assert found[inode(live[name])] == ListeningSocket(
            "udp", family, address, live[name].getsockname()[1], interface, inode(live[name])), name
    assert inode(live["udp_connected"]) not in found
    assert inode(live["tcp4"]) not in found


@pytest.mark.parametrize("backend", BACKENDS)
def test_established(live, backend):
    found = by_inode(sockets.established(backend))
    for pair in ("v4", "v6", "mapped"):
        for side in ("client", "server"):
            sock = live[f"{pair}_{side}"]
            local, peer = sock.getsockname(), sock.getpeername()
            conn = found[inode(sock)]
            family = 6 if pair == "v6" else 4   # the dual-stack server side is IPv4 on the wire
            assert conn == Connection(family, local[0].replace("::ffff:", ""), local[1],
                                      peer[0].replace("::ffff:", ""), peer[1], "lo", inode(sock)), (pair, side)
    client = live["v6_client"]
    assert endpoint(found[inode(client)].remote_address, found[inode(client)].remote_port) == \
        f"[::1]:{live['tcp6'].getsockname()[1]}"
    mapped_server = found[inode(live["mapped_server"])]
    assert endpoint(mapped_server.remote_address, mapped_server.remote_port) == \
        f"127.0.0.1:{live['mapped_client'].getsockname()[1]}"
    assert inode(live["tcp4"]) not in found


def test_backends_agree_on_our_sockets(live):
    ours = {inode(s) for s in live.values()}
    for query in (lambda b: sockets.listening("tcp", b), lambda b: sockets.listening("udp", b),
                  sockets.established):
        netlink, procfs = ({r for r in query(b) if r.inode in ours} for b in BACKENDS)
        assert netlink == procfs and netlink


def test_owner_is_this_process(live):
    owners = processes.socket_owners()
    me = os.getpid()
    name = open(f"/proc/{me}/comm").read().strip()
    for sock in live.values():
        assert owners[inode(sock)] == (me, name)
    attached = by_inode(processes.attach(sockets.listening("tcp")))
    assert attached[inode(live["tcp4"])].pid == me and attached[inode(live["tcp4"])].process == name


def test_attach_leaves_unknown_sockets_alone(live):
    record = ListeningSocket("tcp", 4, "127.0.0.1", 1, "lo", inode=0)
    assert processes.attach([record], owners={0: (1, "init")}) == [record]


@pytest.mark.parametrize("cls, name, kind", [(sockets.ListeningTcpCollector, "listening_tcp", ListeningSocket),
                                             (sockets.ListeningUdpCollector, "listening_udp", ListeningSocket),
                                             (sockets.EstablishedConnectionsCollector, "established_connections",
                                              Connection)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_collectors_report_result(live, cls, name, kind, backend):
    result = cls(backend).collect()
    assert isinstance(result, CollectorResult)
    assert result.name == name and result.success and result.error is None
    assert result.duration_s > 0 and result.details["backend"] == backend
    assert result.data and all(isinstance(r, kind) for r in result.data)


def test_owner_collector(live):
    result = processes.SocketOwnersCollector().collect()
    assert result.success and result.data[inode(live["tcp4"])][0] == os.getpid()


def test_auto_uses_netlink_here():
    assert sockets.backend_name() == "netlink"
    assert sockets.backend_name("procfs") == "procfs"


def test_unknown_backend_and_protocol_are_refused():
    with pytest.raises(ValueError, match="unknown socket backend"):
        sockets.listening("tcp", "pyroute2")
    with pytest.raises(ValueError, match="unknown protocol"):
        sockets.listening("sctp")
    with pytest.raises(ValueError, match="unknown socket backend"):
        sockets.ListeningTcpCollector("bogus")


def _no_netlink():
    raise PermissionError(13, "netlink refused by policy")


def _wrong_netlink():
    # A real netlink socket whose kernel side refuses sock_diag requests (EINVAL): the
    # "first request fails" case, as on kernels without INET_DIAG.
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)


@pytest.fixture
def reconfigure():
    """sockets.configure, with the default backends restored afterwards."""
    yield sockets.configure
    sockets.configure()


@pytest.mark.parametrize("factory", [_no_netlink, _wrong_netlink])
def test_fallback_to_procfs_is_logged_once(live, reconfigure, caplog, factory):
    reconfigure(socket_factory=factory)
    with caplog.at_level(logging.WARNING, logger="garrison.collectors.sockets"):
        assert sockets.backend_name() == "procfs"
        found = by_inode(sockets.listening("tcp"))
        sockets.listening("udp")
        sockets.established()
        result = sockets.ListeningTcpCollector().collect()
    assert found[inode(live["tcp4"])].port == live["tcp4"].getsockname()[1]
    assert result.success and result.details["backend"] == "procfs"
    warnings = [r for r in caplog.records if r.name == "garrison.collectors.sockets"]
    assert len(warnings) == 1
    assert "sock_diag unavailable" in warnings[0].getMessage() and "/proc/net" in warnings[0].getMessage()


def test_forced_netlink_that_fails_is_an_unsuccessful_result(reconfigure):
    reconfigure(socket_factory=_wrong_netlink)
    result = sockets.ListeningTcpCollector("netlink").collect()
    assert not result.success and result.data is None and "Invalid argument" in result.error
    with pytest.raises(_netlink.NetlinkError):
        sockets.listening("tcp", "netlink")


def test_address_map_matches_psutil():
    import psutil
    expected = {}
    for name, addresses in psutil.net_if_addrs().items():
        for addr in addresses:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                expected.setdefault(addr.address.partition("%")[0], name)
    assert interfaces.address_map() == expected
    assert expected["127.0.0.1"] == "lo"


def test_address_map_falls_back_to_psutil(monkeypatch):
    real = interfaces.address_map()

    def refused(*_args, **_kwargs):
        raise PermissionError(13, "route netlink refused")
    monkeypatch.setattr(interfaces._netlink, "interface_addresses", refused)
    assert interfaces.address_map() == real


def test_procfs_root_is_configurable(reconfigure):
    import json
    from collector_helpers import DATA
    expected = json.loads((DATA / "expected.json").read_text())
    if expected["byteorder"] != sys.byteorder:
        pytest.skip("fixture captured on a host of the other byte order")
    reconfigure(procfs_root=str(DATA / "proc"))
    found = sockets.listening("tcp", "procfs")
    want = {(s["port"], s["inode"]) for s in expected["sockets"] if s["kind"] == "tcp_listen"}
    assert {(r.port, r.inode) for r in found} == want
    assert sockets.backend_name() == "netlink"       # auto still prefers the live kernel


def test_silent_kernel_times_out_into_procfs(live, reconfigure, monkeypatch, caplog):
    # NETLINK_KOBJECT_UEVENT never answers requests: a kernel (or emulator) that stays silent
    monkeypatch.setattr(_netlink, "_TIMEOUT_S", 0.3)
    reconfigure(socket_factory=lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15))
    with caplog.at_level(logging.WARNING, logger="garrison.collectors.sockets"):
        assert sockets.backend_name() == "procfs"
    assert "timed out" in caplog.text
    assert inode(live["udp4"]) in by_inode(sockets.listening("udp"))


def test_interface_counters_collector_live():
    default = interfaces.InterfaceCountersCollector().collect()
    assert default.success and default.name == "interface_counters" and "lo" not in default.data
    chosen = interfaces.InterfaceCountersCollector(include=["lo"]).collect()
    assert list(chosen.data) == ["lo"]
    with_lo = interfaces.InterfaceCountersCollector(include_loopback=True).collect()
    assert set(with_lo.data) == set(default.data) | {"lo"}
    # loopback traffic of this test shows up
    before = chosen.data["lo"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(10):
            sender.sendto(b"x" * 500, ("127.0.0.1", 9))
    after = interfaces.counters(include=["lo"])["lo"]
    assert after.packets_out - before.packets_out >= 10 and after.bytes_out - before.bytes_out >= 5000


def test_missing_proc_dev_is_an_unsuccessful_result(tmp_path):
    result = interfaces.InterfaceCountersCollector(root=str(tmp_path)).collect()
    assert not result.success and "FileNotFoundError" in result.error
