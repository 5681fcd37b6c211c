"""A real API server over an engine, and one call to it (for tests of routes added by features)."""
import json
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
