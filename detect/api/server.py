"""Serving the API: uvicorn on its own thread and event loop, with bounded connections.

The engine's broker connection lives in paho's thread and never waits on this one. What a
crowd of slow or idle clients can take is bounded (issue 10, item 4: 1,035 connections that
never sent their headers held 1,024 fds and 1,016 threads of the old threaded server, /health
timed out and the broker reconnection waited 65 s):
- at most `max_connections` connections: past it, the oldest connection that has not sent a
  complete request is closed to admit the new one (an idle crowd cannot lock anyone out);
- a request's headers must arrive within `header_timeout` s of the connection (or of the
  previous response): uvicorn has a keep-alive timeout but none for the first request's headers;
  its body within `body_timeout` s after them (in guard.BodyGuard);
- idle keep-alive connections close after `keep_alive` s; stop() waits at most `graceful_shutdown` s;
- a client that stops reading its answers (e.g. pipelined requests for a static file, its
  receive window shut) stalls the response: uvicorn waits for the socket to drain, with no
  deadline, and the connection is not idle. A stalled connection is aborted after `send_timeout`
  s and, at the connection cap, evicted like an idle one (the one stalled the longest): else a
  few hundred such clients held every slot and locked everyone out;
- a refusal sent before its request's body was read (401 without a token or session, 413, 408)
  closes the connection in stages (RFC 9112 section 9.6): the answer, then a FIN, then what is
  left of the body is read and thrown away, at most `linger_bytes` within `linger` s, and
  only then the socket is closed. Closed at once, a socket with unread data makes the kernel send
  a reset, which can reach the client before it has read the answer (it saw a reset, not a 401);
  a lingering connection counts as idle, first in line for eviction at the connection cap;
- one event loop, and the handlers on FastAPI's bounded thread pool (anyio's 40 threads): no
  thread per connection. uvicorn's `limit_concurrency` counts connections and, apart, request
  tasks, and answers 503 when either reaches it: set at the cap, it refused everyone while an idle
  crowd was connected, and a connection's pipelined requests briefly hold two tasks (the answer
  that finished, the next one), so at the cap of 8 a ninth task was a 503 too. It is set at twice
  the cap plus one, a backstop the connection cap keeps out of reach.
"""

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from garrison.detect.api.app import create_app
from garrison.detect.api.guard import MAX_BODY_BYTES

log = logging.getLogger("garrison.api")


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256  # well under the unit's LimitNOFILE; each is one fd
    header_timeout: float = 10.0  # seconds to send a complete request line and headers
    body_timeout: float = 30.0  # seconds to send the body, after the headers (guard.BodyGuard)
    keep_alive: int = 5  # seconds an idle keep-alive connection stays open
    graceful_shutdown: int = 3  # seconds stop() lets running requests finish
    linger: float = 5.0  # seconds a refused request's unread body is discarded before the close
    linger_bytes: int = MAX_BODY_BYTES  # and at most this much of it
    send_timeout: float = 30.0  # seconds a response may wait for a client that does not read it
    backlog: int = 128  # the kernel's accept queue, and asyncio's accepts per wake-up:
    #                                 so at most max_connections + backlog fds before eviction runs


def _guarded_protocol(limits: Limits):
    """uvicorn's h11 protocol with a header deadline, the connection cap and a staged close."""

    class GuardedH11Protocol(H11Protocol):
        lingering = False

        def connection_made(self, transport):
            self.raw_transport = transport
            # uvicorn closes through protocol.transport (and its request cycles' copy of it)
            super().connection_made(cast(asyncio.Transport, _StagedClose(transport, self)))
            self._arm_header_deadline()
            if len(self.connections) > limits.max_connections:
                _evict_one(self)

        def close_transport(self) -> None:
            raw = self.raw_transport
            unread = self.conn.their_state is h11.SEND_BODY  # the request's body has not all been read
            if self.lingering or not unread or raw.is_closing() or not raw.can_write_eof():
                raw.close()
                return
            self.lingering, self._discarded = True, 0
            raw.write_eof()  # after the answer: the client reads it whole, then its end
            raw.resume_reading()  # uvicorn may have paused reading at its buffer's high-water mark
            self._linger_deadline = self.loop.call_later(limits.linger, raw.close)

        def pause_writing(self):  # the write buffer is full: the client does not read
            super().pause_writing()
            self._stalled_since = time.monotonic()
            self._send_deadline = self.loop.call_later(limits.send_timeout, self.abort)

        def resume_writing(self):
            super().resume_writing()
            self._stalled_since = None
            self._send_deadline.cancel()

        def abort(self):  # close() would wait to send what the client does not read
            log.debug("API: aborting %s: it does not read its answer", self.client)
            self.raw_transport.abort()

        def stalled(self) -> bool:
            return getattr(self, "_stalled_since", None) is not None and not self.raw_transport.is_closing()

        def data_received(self, data):
            if not self.lingering:
                return super().data_received(data)
            self._discarded += len(data)  # the refused body: neither parsed nor kept
            if self._discarded > limits.linger_bytes:
                self.raw_transport.close()
            return None

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc):
            for name in ("_header_deadline", "_linger_deadline", "_send_deadline"):
                deadline = getattr(self, name, None)
                if deadline is not None:
                    deadline.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self):
            self._waiting_since = time.monotonic()
            previous = getattr(self, "_header_deadline", None)
            if previous is not None:
                previous.cancel()
            self._header_deadline = self.loop.call_later(limits.header_timeout, self._header_deadline_passed)

        def _header_deadline_passed(self):
            if self.waiting_for_headers() and not self.transport.is_closing():
                log.debug("API: closing %s: no complete request within %gs", self.client, limits.header_timeout)
                self.transport.close()

        def waiting_for_headers(self) -> bool:
            # `cycle` is uvicorn's current request: a new one exists once its headers are parsed
            return self.cycle is None or self.cycle.response_complete

    def _evict_one(newcomer) -> None:
        idle = [
            c
            for c in newcomer.connections
            if c is not newcomer and c.waiting_for_headers() and (c.lingering or not c.raw_transport.is_closing())
        ]
        stalled = [c for c in newcomer.connections if c is not newcomer and c.stalled()]
        # a lingering one has had its answer; then the one stalled the longest (a client that does
        # not read); then the one idle the longest
        if stalled and not any(c.lingering for c in idle):
            victim = min(stalled, key=lambda c: c._stalled_since)
        else:
            victim = min(idle, key=lambda c: (not c.lingering, c._waiting_since)) if idle else newcomer
        log.debug("API: %d connections (the limit); closing %s", len(newcomer.connections), victim.client)
        if victim in stalled:
            victim.abort()
        else:
            victim.transport.close()

    return GuardedH11Protocol


class _StagedClose:
    """The connection's transport as uvicorn sees it: close() goes to the protocol's staged close."""

    def __init__(self, transport: asyncio.Transport, protocol):
        self._transport, self._protocol = transport, protocol

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_transport()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()


class ApiServer:
    """The API on `host:port` (port 0 picks a free one; see `.port`), served from its own thread."""

    def __init__(self, engine, token: str, host: str = "127.0.0.1", port: int = 8765, limits: Limits = Limits()):
        if not token:
            raise ValueError("the API needs a token")
        # bind here, in the caller's thread, so a busy port is an OSError the CLI reports
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(limits.backlog)
        except OSError:
            self.sock.close()
            raise
        self.host, self.port = self.sock.getsockname()[:2]
        self.limits = limits
        config = uvicorn.Config(
            create_app(engine, token, limits.body_timeout),
            http=_guarded_protocol(limits),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=limits.keep_alive,
            limit_concurrency=2 * limits.max_connections + 1,  # the backstop: see the docstring
            timeout_graceful_shutdown=limits.graceful_shutdown,
            h11_max_incomplete_event_size=16 * 1024,
            backlog=limits.backlog,
        )
        self.server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop lines speak of a process
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "ApiServer":
        self._thread = threading.Thread(target=self._run, name="garrison-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise OSError(f"the API did not start on {self.url}")
        log.info("HTTP API on %s (bearer token required)", self.url)
        return self

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread:
            self._thread.join(self.limits.graceful_shutdown + 2)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(2)
        self.sock.close()
