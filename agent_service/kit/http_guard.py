"""The web server's own bounds, which uvicorn lacks with its httptools parser: a request line plus
headers of at most HTTP_MAX_HEADER_BYTES (beyond: 431), complete within HTTP_HEADER_TIMEOUT of the
connection opening or of the request's first byte (beyond: 408). So neither a 50 MB header nor a
slowloris client (headers one byte at a time, forever) holds memory or a connection.

`server_options` is the one place that turns Settings into uvicorn's keyword arguments; everything
that starts the web process goes through `python -m agent_service web`, which uses it."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from agent_service.config import Settings
from agent_service.kit.client_ip import parse_trusted
from agent_service.kit.schemas import Problem
from agent_service.kit.ws import MAX_MESSAGE_BYTES

LINGER = 2.0  # after an error answer: how long unread bytes are drained before the socket is closed
_PROBLEM = b"application/problem+json"


def _problem(status: int, code: str, title: str, detail: str) -> bytes:
    return msgspec.json.encode(Problem(type=f"urn:agent-service:problem:{code}", title=title, status=status,
                                       detail=detail, code=code))


TOO_LARGE = _problem(431, "header_fields_too_large", "Request Header Fields Too Large",
                     "The request line and headers are larger than this server accepts.")
TIMED_OUT = _problem(408, "request_timeout", "Request Timeout", "The request headers did not arrive in time.")


async def _too_large(scope: Any, receive: Any, send: Any) -> None:
    """The answer to complete but oversized headers, run as uvicorn runs its own 503: in turn with
    any pipelined requests before it, and closing the connection."""
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", _PROBLEM), (b"content-length", str(len(TOO_LARGE)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": TOO_LARGE, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-size bound and a header deadline per request.

    Bytes are counted per `data_received` chunk (no per-byte work) while a request line or headers
    are being read: httptools gathers a header in its own buffer and reports it only once complete,
    so counting in the header callbacks alone would not bound one endless header. When the headers
    are complete the count is an upper bound of their size if the request began at a chunk's start
    (the usual case: one request, one read); only otherwise is the exact size summed from what the
    parser produced. The deadline timer is armed only when a chunk leaves headers incomplete, so a
    request whose headers come in one read (nearly all) costs no timer."""

    max_header_bytes = 16_384
    header_timeout = 10.0

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_headers = True  # the bytes arriving now belong to a request line or headers
        self._header_bytes = 0  # of the current request so far (per chunk; at most one chunk too few)
        self._request_started = False  # its first byte came: a timeout is answered (408), not just closed
        self._exact = True  # the count began at a chunk's start, so it bounds the header size from above
        self._refused = False  # answered with an error: further bytes are dropped unread
        self._oversized = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # an opened connection that never sends a byte is bounded too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if not self._reading_headers:
            return
        # a request line or headers are still incomplete after this chunk
        if self._header_bytes > self.max_header_bytes:
            if not self.transport.is_closing():
                self._refuse(431, TOO_LARGE)
            return
        if self._request_started or self._header_bytes:
            self._arm_header_timer()
        else:
            self._exact = True  # nothing of the next request yet: its count will start with a chunk

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_started = True

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._cancel_header_timer()
        self._reading_headers = self._request_started = False
        self._oversized = not (self._exact and self._header_bytes <= self.max_header_bytes) and (
            len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > self.max_header_bytes)
        if not self._oversized:
            super().on_headers_complete()
            return
        # no upgrade either (_should_upgrade): the request is answered, not handed on
        app, self.app = self.app, _too_large
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # what follows is the next request, maybe in this very chunk (so uncounted: not exact)
        self._reading_headers, self._header_bytes, self._exact = True, 0, False

    def _should_upgrade(self) -> bool:
        return not self._oversized and super()._should_upgrade()

    # the bounds
    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._request_started:
            self._refuse(408, TIMED_OUT)
        else:
            self._refuse(None, b"")  # nothing was asked: nothing to answer

    def _refuse(self, status: int | None, body: bytes) -> None:
        self._cancel_header_timer()
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # an earlier (pipelined) request is still being answered: let that finish, then close
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if status is None or self.transport.is_closing():
            self.transport.close()
            return
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: ", _PROBLEM, b"\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nconnection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing with unread bytes in the socket would send a reset, which can destroy the answer
        # before the client reads it: half-close, drop what still comes (or EOF closes us), then close.
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER, self.transport.close)


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    class Configured(GuardedHttpToolsProtocol):
        max_header_bytes = settings.http_max_header_bytes
        header_timeout = settings.http_header_timeout

    return Configured


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's keyword arguments for the web process."""
    parse_trusted(settings.trusted_proxies)  # a bad TRUSTED_PROXIES stops the start here, with its name
    return {
        "host": settings.host, "port": settings.port, "factory": True,
        "log_config": None, "access_log": False,  # our logging and our own access log (logging.py)
        "http": guarded_protocol(settings),
        # X-Forwarded-For is believed in ONE place, kit/client_ip.py, against TRUSTED_PROXIES. uvicorn's
        # rewriting would come first and trusts 127.0.0.1 by default, which on a PaaS is every request.
        "proxy_headers": False,
        # uvicorn counts the asking connection itself (`>=`): + 1 lets exactly HTTP_MAX_CONNECTIONS be served
        "limit_concurrency": settings.http_max_connections + 1,
        "timeout_keep_alive": settings.http_keepalive_timeout,
        "timeout_graceful_shutdown": 10,
        "ws_max_size": MAX_MESSAGE_BYTES,  # a larger WebSocket frame closes the connection (1009) unread
    }
