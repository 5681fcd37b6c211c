"""The console's front door: what a request under /console passes before FastAPI sees it.

The API's BodyGuard wants a bearer token before any body and takes JSON only; the console's
forms carry a session cookie instead. So under /console: a body is read only from a signed-in
session (a live, signed cookie), except the sign-in form itself, which may send at most
LOGIN_MAX_BYTES; any body is capped (MAX_BYTES) and must arrive within the body timeout.
Everything else goes to the API's guard unchanged.
"""

import asyncio
from http.cookies import SimpleCookie
from typing import Optional

from garrison.detect.api.guard import read_body
from garrison.detect.console.sessions import COOKIE

PREFIX = b"/console"
LOGIN_PATH = "/console/login"
LOGIN_MAX_BYTES = 4096
MAX_BYTES = 512 * 1024


class ConsoleFront:
    def __init__(self, app, api_guard, sessions, body_timeout: float):
        self.app, self.api_guard, self.sessions, self.body_timeout = app, api_guard, sessions, body_timeout

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/console" or path.startswith("/console/")):
            return await self.api_guard(scope, receive, send)
        headers = scope["headers"]
        length = next((v for n, v in headers if n == b"content-length"), None)
        chunked = any(n == b"transfer-encoding" for n, _ in headers)
        if length in (None, b"0") and not chunked:
            return await self.app(scope, receive, send)
        limit = LOGIN_MAX_BYTES if path == LOGIN_PATH else MAX_BYTES
        if path != LOGIN_PATH and self.sessions.get(_cookie(headers)) is None:
            return await _plain(send, 401, b"sign in first")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _plain(send, 413, b"the form is too large")
        try:
            body = await asyncio.wait_for(read_body(receive, limit), self.body_timeout)
        except asyncio.TimeoutError:
            return await _plain(send, 408, b"the form did not arrive in time")
        if body is None:
            return None
        if len(body) > limit:
            return await _plain(send, 413, b"the form is too large")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)


def _cookie(headers) -> Optional[str]:
    for name, value in headers:
        if name == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:
                continue
            if COOKIE in jar:
                return jar[COOKIE].value
    return None


async def _plain(send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"cache-control", b"no-store"),
                # as the API's refusals: an unread body is then discarded within the server's
                # bounds (server.Limits.linger), not by uvicorn's keep-alive, with no byte limit
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": text})
