"""Issue 10, item 4: a crowd of connections that never finish their headers must neither starve
the HTTP API nor the engine's broker connection.

A real `garrison-detect serve` (fd limit 1,024, as the old threaded server had when it fell over)
on a real Mosquitto; 1,100 loopback connections, half silent, half sending headers that never end.
During the attack /health answers within seconds, the engine's fds and threads stay bounded, and
after a broker restart the engine reconnects and answers a device's report promptly. The old
stdlib server (a thread per connection) gave 1,024 fds, 1,016 threads, a /health timeout and a
65 s reconnection. The in-process tests pin the two mechanisms: the header deadline and the
eviction of the oldest idle connection at the connection cap.
"""
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from garrison.agent import report as wire
from garrison.agent.transports.paho_compat import new_client
from garrison.detect.api.server import ApiServer, Limits
from garrison.detect.clock import ManualClock
from garrison.detect.engine import Engine
from garrison.detect.state.store import Store
from fixtures import free_port, wait_for

from engine_support import build

CLI = [sys.executable, "-m", "garrison.detect.cli"]
TOKEN = "starvation-token"
ATTACKERS = 1100
PARTIAL_HEADERS = b"GET /health HTTP/1.1\r\nHost: engine\r\nX-Slow: "   # never finished


def _engine_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))  # the limit the old server exhausted


# The crowd lives in its own process (as an attacker would), so this process keeps few fds:
# paho's select() cannot watch a descriptor numbered over 1,024.
ATTACKER = r"""
import select, socket, sys, time
count, port, partial = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
socks = []
for i in range(count):
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    socks.append(sock)
pending, deadline = set(socks), time.monotonic() + 15
poller = select.poll()  # poll, not select: these descriptors number over 1,024
for sock in socks:
    poller.register(sock, select.POLLOUT)
while pending and time.monotonic() < deadline:  # until the server has taken in the whole crowd
    for fd, _ in poller.poll(100):
        poller.unregister(fd)
        pending.discard(next(s for s in pending if s.fileno() == fd))
for sock in socks[::2]:  # half send headers that never end; half send nothing
    try:
        sock.send(partial)
    except OSError:
        pass  # already closed by the server
print("ready", flush=True)
sys.stdin.read()  # hold them until the test closes our stdin
"""


def _attacker_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (ATTACKERS + 64, ATTACKERS + 64))


def attack(port: int, count: int) -> subprocess.Popen:
    """A process holding `count` connections that never complete a request."""
    proc = subprocess.Popen([sys.executable, "-c", ATTACKER, str(count), str(port), PARTIAL_HEADERS.decode()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_attacker_fd_limit)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _settled(pid: int, bound: float = 20.0) -> None:
    """Let the server take in the crowd: until its fd count holds still for 3 s (bounded)."""
    deadline, last, since = time.monotonic() + bound, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = _count(Path(f"/proc/{pid}/fd"))
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= 3.0:
            return
        time.sleep(0.1)


def health_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/health", timeout=10) as response:
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
    return time.monotonic() - started


def _count(path: Path) -> int:
    return len(os.listdir(path))


def test_idle_connections_starve_neither_the_api_nor_the_broker_connection(mosquitto, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(CLI + ["serve", "--broker", mosquitto.url, "--db", str(tmp_path / "e.db"),
                                       "--min-report-interval", "0", "--api-bind", f"127.0.0.1:{port}",
                                       "--api-token", TOKEN], stdout=log, stderr=log,
                                preexec_fn=_engine_fd_limit)
    url = f"http://127.0.0.1:{port}"
    attacker = None
    try:
        wait_for(lambda: "serving:" in log_path.read_text() or proc.poll() is not None, 30, "serve to start")
        assert proc.poll() is None, log_path.read_text()
        assert log_path.read_text().count("connected to") == 1

        attacker = attack(port, ATTACKERS)
        _settled(proc.pid)
        times = [health_seconds(url) for _ in range(3)]
        worst = max(times)
        assert worst < 3.0, f"/health took {worst:.1f}s during the attack"
        fds, threads = _count(Path(f"/proc/{proc.pid}/fd")), _count(Path(f"/proc/{proc.pid}/task"))
        assert fds < 400 and threads < 64, (fds, threads)  # old server: 1,024 fds, 1,016 threads

        mosquitto.restart()  # the broker goes away and comes back while the crowd is still there
        restarted = time.monotonic()
        wait_for(lambda: log_path.read_text().count("connected to") >= 2, 20, "the engine to reconnect")
        reconnect_s = time.monotonic() - restarted

        device = new_client(f"starve-{os.getpid()}")
        replies, subscribed = [], []
        device.on_message = lambda c, u, msg: replies.append(msg.topic)
        device.on_subscribe = lambda *args: subscribed.append(True)
        device.connect(mosquitto.host, mosquitto.port)
        device.subscribe("$aws/things/starve-1/defender/metrics/json/+", 1)
        device.loop_start()
        try:
            wait_for(lambda: subscribed, 10, "the device's subscription")
            device.publish(wire.topic("starve-1", "json"), wire.encode(build(connections=1), "json"), qos=1)
            wait_for(lambda: replies, 10, "the engine to answer a report")
            assert replies[0].endswith("/accepted"), (replies, log_path.read_text()[-2000:])
        finally:
            device.loop_stop()
            device.disconnect()
        assert health_seconds(url) < 3.0
        print(f"during {ATTACKERS} idle connections: /health worst {worst * 1000:.0f} ms, engine fds {fds}, "
              f"threads {threads}, broker reconnection {reconnect_s:.1f} s")
        assert reconnect_s < 10, reconnect_s
    finally:
        if attacker:
            attacker.stdin.close()
            attacker.wait(10)
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0, log_path.read_text()[-3000:]


@pytest.fixture
def small_server(tmp_path):
    engine = Engine(Store(tmp_path / "api.db"), ManualClock())
    server = ApiServer(engine, TOKEN, "127.0.0.1", 0, Limits(max_connections=8, header_timeout=1.0, body_timeout=1.0)).start()
    yield server
    server.stop()
    engine.store.close()


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _response(sock: socket.socket) -> bytes:
    """One small response (headers and body may come in separate segments)."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_headers_must_arrive_within_the_header_timeout(small_server):
    silent = socket.create_connection(("127.0.0.1", small_server.port))
    slow = socket.create_connection(("127.0.0.1", small_server.port))
    slow.sendall(PARTIAL_HEADERS)
    started = time.monotonic()
    assert _closed_by_server(silent, 5) and _closed_by_server(slow, 5)
    assert 0.8 < time.monotonic() - started < 3.0
    # a client that sends its request in time is answered, and its keep-alive connection reused
    with socket.create_connection(("127.0.0.1", small_server.port)) as good:
        for _ in range(3):
            good.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b'{"status":"ok"}' in _response(good)
            time.sleep(0.6)  # under the deadline each time, over it in total: the deadline restarts per request


def test_at_the_connection_cap_the_oldest_idle_connection_makes_room(small_server):
    crowd = [socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(8)]
    time.sleep(0.2)
    assert health_seconds(small_server.url) < 1.0            # admitted: the oldest idle one was closed
    assert _closed_by_server(crowd[0], 2)
    assert not _closed_by_server(crowd[-1], 0.2)              # the newest still waits (until its deadline)
    for sock in crowd:
        sock.close()


def test_a_body_must_arrive_within_the_body_timeout(small_server):
    with socket.create_connection(("127.0.0.1", small_server.port)) as sock:
        sock.sendall(f"POST /thing-groups/g HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 100\r\n\r\n{\"descr".encode())
        started = time.monotonic()
        answer = _response(sock)
        assert answer.split(b" ")[1] == b"408" and b"RequestTimeout" in answer
        assert 0.8 < time.monotonic() - started < 3.0


def _refused(port: int, length: int) -> socket.socket:
    """A POST with no token announcing `length` bytes, its 401 read: the server now lingers."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /thing-groups/g HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    assert _response(sock).split(b" ")[1] == b"401"
    return sock


def _fully_closed(sock: socket.socket) -> bool:
    """Past the server's FIN (its half-close), a byte sent after its full close comes back as a reset."""
    try:
        sock.sendall(b"x")
        return False
    except OSError:
        return True


def _server(tmp_path, limits: Limits):
    engine = Engine(Store(tmp_path / "api.db"), ManualClock())
    return ApiServer(engine, TOKEN, "127.0.0.1", 0, limits).start(), engine


def test_a_refused_body_is_discarded_up_to_the_byte_bound_then_the_connection_closes(tmp_path):
    server, engine = _server(tmp_path, Limits(linger=60.0, linger_bytes=64 * 1024))
    try:
        with _refused(server.port, 1024 ** 3) as sock:
            sent, chunk = 0, b"x" * 65536
            with pytest.raises(OSError):  # a reset, well before the gigabyte announced
                while sent < 256 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
        assert health_seconds(server.url) < 1.0
    finally:
        server.stop()
        engine.store.close()


def test_a_refused_body_is_discarded_for_at_most_the_linger_time(tmp_path):
    server, engine = _server(tmp_path, Limits(linger=1.0))
    try:
        with _refused(server.port, 1024 * 1024) as sock:
            started = time.monotonic()
            assert sock.recv(1) == b""                                        # the answer, then its FIN
            wait_for(lambda: _fully_closed(sock), timeout=5, what="the close after the linger time")
            assert 0.8 < time.monotonic() - started < 3.0                     # a trickle does not hold it open
    finally:
        server.stop()
        engine.store.close()


def test_at_the_connection_cap_a_lingering_connection_goes_first(small_server):
    crowd = [socket.create_connection(("127.0.0.1", small_server.port)) for _ in range(7)]
    lingering = _refused(small_server.port, 1000)             # the newest of the 8, but answered already
    assert not _fully_closed(lingering)
    assert health_seconds(small_server.url) < 1.0
    wait_for(lambda: _fully_closed(lingering), timeout=0.8, what="the lingering connection's close")
    assert not _closed_by_server(crowd[0], 0.1)               # the oldest idle one is still open
    for sock in crowd + [lingering]:
        sock.close()


STATIC = b"GET /console/static/uPlot.iife.min.js HTTP/1.1\r\nHost: x\r\n\r\n"  # 51 KB, no sign-in


def _not_reading(port: int) -> socket.socket:
    """A client that pipelines requests for 51 MB of answers and reads none: its receive window
    shuts, and the server's response waits for it to drain."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(STATIC * 1000)
    return sock


def _stalled(server) -> int:
    """Connections whose answers wait in the server's buffer for a client that does not read."""
    return sum(c.raw_transport.get_write_buffer_size() > 0 for c in list(server.server.server_state.connections))


def test_clients_that_do_not_read_their_answers_cannot_hold_every_connection(tmp_path):
    """At the cap, a stalled connection makes room like an idle one. Before: 8 such clients
    (the cap) held every slot with no deadline, and /health was refused for as long as they wished."""
    server, engine = _server(tmp_path, Limits(max_connections=8, header_timeout=1.0))
    crowd = []
    try:
        for n in range(1, 9):
            crowd.append(_not_reading(server.port))
            wait_for(lambda: _stalled(server) == n, timeout=10, what=f"{n} stalled connections")
        for _ in range(3):
            assert health_seconds(server.url) < 1.0
        assert _stalled(server) == 7                              # one evicted: room for the newcomers
    finally:
        for sock in crowd:
            sock.close()
        server.stop()
        engine.store.close()


def test_a_response_the_client_does_not_read_is_aborted_after_the_send_timeout(tmp_path):
    server, engine = _server(tmp_path, Limits(send_timeout=1.0))
    try:
        with _not_reading(server.port):
            wait_for(lambda: _stalled(server) == 1, timeout=10, what="a stalled connection")
            started = time.monotonic()
            wait_for(lambda: not server.server.server_state.connections, timeout=5, what="the abort")
            assert time.monotonic() - started < 3.0
    finally:
        server.stop()
        engine.store.close()
