"""What every request passes before FastAPI sees it: a body cap, a nesting cap, the token first.

An ASGI middleware (no routing knowledge):
- a request with a body must carry the engine's token before the body is read (401 otherwise):
  an anonymous client cannot make the engine buffer or parse anything;
- the body is at most MAX_BODY_BYTES (413), whatever Content-Length says or does not say, and
  arrives within BODY_TIMEOUT s (408): uvicorn has no timeout once the headers are in;
- it must be JSON nested at most MAX_DEPTH deep (400): Python's json module and pydantic recurse,
  and a body of 100,000 "[" gave a RecursionError, a 500, before;
- it is handed on as JSON whatever its Content-Type (`curl -d` labels it a form): the API speaks
  JSON only, as it always has;
- every response says Cache-Control: no-store (it carries fleet state behind a token).
"""

import asyncio
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
BODY_TIMEOUT = 30.0

Headers = List[Tuple[bytes, bytes]]


def nesting_depth(doc: Any, limit: int) -> int:
    """How deep `doc` nests (a scalar is 0, [] is 1), counting no further than limit + 1."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


class BodyGuard:
    def __init__(
        self,
        app,
        token_ok: Callable[[Headers], bool],
        max_bytes: int = MAX_BODY_BYTES,
        max_depth: int = MAX_DEPTH,
        body_timeout: float = BODY_TIMEOUT,
    ):
        self.app, self.token_ok, self.max_bytes, self.max_depth = app, token_ok, max_bytes, max_depth
        self.body_timeout = body_timeout

    async def __call__(self, scope: Dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_no_store(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [(b"cache-control", b"no-store")])
            await send(message)

        headers: Headers = scope["headers"]
        length = next((value for name, value in headers if name == b"content-length"), None)
        chunked = any(name == b"transfer-encoding" for name, _ in headers)
        if length in (None, b"0") and not chunked:
            return await self.app(scope, receive, send_no_store)
        if not self.token_ok(headers):
            return await _error(send_no_store, 401, "Unauthorized", "a valid bearer token is required")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _error(send_no_store, 413, "PayloadTooLarge", f"the body is over {self.max_bytes} bytes")
        try:
            body = await asyncio.wait_for(read_body(receive, self.max_bytes), self.body_timeout)
        except asyncio.TimeoutError:
            return await _error(
                send_no_store, 408, "RequestTimeout", f"the body did not arrive within {self.body_timeout:g} s"
            )
        if body is None:
            return None  # the client went away
        if len(body) > self.max_bytes:
            return await _error(send_no_store, 413, "PayloadTooLarge", f"the body is over {self.max_bytes} bytes")
        if body.strip():
            try:
                doc = json.loads(body)
            except RecursionError:
                doc = None
                depth = self.max_depth + 1
            except ValueError as exc:
                return await _error(send_no_store, 400, "InvalidJson", f"the body is not JSON: {exc}")
            else:
                depth = nesting_depth(doc, self.max_depth)
            if depth > self.max_depth:
                return await _error(
                    send_no_store, 400, "InvalidRequest", f"the body nests deeper than {self.max_depth} levels"
                )
            scope = dict(
                scope,
                headers=[(n, v) for n, v in headers if n != b"content-type"] + [(b"content-type", b"application/json")],
            )
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as servers do
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send_no_store)


async def _error(send, status: int, code: str, message: str) -> None:
    data = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="garrison-detect"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def read_body(receive, limit: int) -> Optional[bytearray]:
    """The whole request body, or as soon as it is over `limit`; None when the client left."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit or not message.get("more_body", False):
            return body
