"""WebSocket machinery that knows no domain: close codes, the frame bound, the Origin check, the
refusal of a handshake, rate limits charged as a request would be, and the socket as a domain
sees it (text frames in and out, no framework).

`route()`/`@endpoint` (kit/endpoint.py) are HTTP-only: a WebSocket may authenticate after the
handshake (a browser cannot set headers on one), so its endpoint does auth, scope and limits
itself with these helpers.

CORS does not apply to WebSockets: a page of any origin may open one, and the browser only tells
the server which origin it is (`Origin`). `origin_allowed` is the check CORS would have made: the
CORS_ORIGINS list (`*` allows any), the server's own origin (the Host the client asked for, or
PUBLIC_BASE_URL's). No `Origin` at all is not a browser (which always sends it), so nothing is at
stake and it passes.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agent_service.kit.endpoint import Caller, LimitCheck, Limits

MAX_MESSAGE_BYTES = 16_384  # a client frame; the server refuses larger ones (kit/http_guard.py too)

# close codes: RFC 6455's where one fits, 4000-4999 (the application's own range) otherwise
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013  # the 429 of a WebSocket: too many streams, rate limited
CLOSE_RECONNECT = 4000  # the server ended it (lifetime, or it let the follower go): reconnect and resume
CLOSE_UNAUTHORIZED = 4401  # no valid credential in time
CLOSE_FORBIDDEN = 4403  # authenticated, without the scope this socket needs


class SocketGone(Exception):
    """The client left (or the connection broke) while we were sending."""


class Socket(Protocol):
    """A connected WebSocket as a domain uses it."""

    async def send(self, text: str) -> None:
        """One text frame; raises SocketGone if the client left."""

    async def receive(self) -> str | bytes | None:
        """The next frame's payload; None once the client has gone."""


class StarletteSocket:
    """A Starlette WebSocket (accepted) as a `Socket`."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):  # RuntimeError: sent after a close
            raise SocketGone from None

    async def receive(self) -> str | bytes | None:
        if self._ws.client_state == WebSocketState.DISCONNECTED:
            return None
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        return text if text is not None else bytes(message.get("bytes") or b"")

    async def close(self, code: int, reason: str) -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            try:
                await self._ws.close(code, reason[:120])  # a close frame's reason is at most 123 bytes
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # gone already


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(scope: MutableMapping[str, Any], cors_origins: list[str], public_base_url: str | None) -> bool:
    origin = Headers(scope=scope).get("origin")
    if origin is None:
        return True
    if "*" in cors_origins:
        return True
    allowed = {o.lower() for o in cors_origins}
    host = Headers(scope=scope).get("host")
    if host:
        allowed.add(f"{'https' if scope.get('scheme') in ('wss', 'https') else 'http'}://{host}".lower())
    if public_base_url:
        allowed.add(_origin(public_base_url))
    return origin.rstrip("/").lower() in allowed


async def refuse(ws: WebSocket) -> None:
    """Refuse the handshake (before `accept`): the server answers the upgrade with a 403. (Not a
    problem+json body through the denial-response extension: uvicorn logs each such answer as an
    error, and a browser, the one client the Origin check is about, never shows the body.)"""
    await ws.close(1008)


async def charge(ws: WebSocket, limits: Limits, caller: Caller) -> None:
    """Charge this caller's rate limit as one GET would be (raises TooManyRequests, like the route layer)."""
    check: LimitCheck = ws.app.state.limit_check
    # the limiter reads a request's app, path, client and method: the upgrade is a GET
    await check(Request({**ws.scope, "type": "http", "method": "GET"}), limits, caller)
