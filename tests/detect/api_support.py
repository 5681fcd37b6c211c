"""A real API server over an engine, and one call to it (for tests of routes added by features)."""
import json
import select
import socket
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

from garrison.detect.api.server import ApiServer

TOKEN = "feature-test-token"


@contextmanager
def served(engine):
    server = ApiServer(engine, TOKEN, "127.0.0.1", 0).start()
    try:
        yield lambda method, path, body=None, **query: call(server, method, path, body, **query)
    finally:
        server.stop()


def call(server, method, path, body=None, **query):
    url = server.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_body_after_answer(server, path: str, headers: str, body: bytes, connection: str = "close") -> bytes:
    """A POST as urllib sends one (its headers, then its body, then it reads), with the body held
    until the answer has arrived: the server answered before reading the body, and a body that
    reaches a socket closed with it unread is answered by a reset (raised here)."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n{headers}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        assert select.select([sock], [], [], 10)[0], "no answer before the body"
        sock.sendall(body)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
