"""GET /api/v1/ws: follow many tasks over one WebSocket (tasks/ws.py serves the connection).

The handshake: a browser page's `Origin` must be one CORS_ORIGINS allows or the server's own
(else the upgrade is refused with a 403: CORS does not guard WebSockets). A credential
header on the upgrade (`X-API-Key` or `Authorization: Bearer`) is checked by the auth middleware
like any request's (a bad one refuses the upgrade, 403); without one, the first message must be
`{"type": "auth", "token": "<JWT or API key>"}` within AUTH_TIMEOUT seconds (browsers cannot set
headers on a WebSocket), else close 4401. The caller needs `tasks:read` (else 4403). Then the
connection is charged to the caller's rate limit like a request and takes one stream slot
(kit/stream_slots.py, the bounds SSE followers share): over either, an `error` and close 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from agent_service.errors import AppError, TooManyRequests
from agent_service.identity import service as identity
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller, Limits, caller_of
from agent_service.kit.stream_slots import StreamSlots
from agent_service.kit.ws import (
    CLOSE_FORBIDDEN,
    CLOSE_INTERNAL,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    CLOSE_UNAUTHORIZED,
    SocketGone,
    StarletteSocket,
    charge,
    origin_allowed,
    refuse,
)
from agent_service.logging import get_logger
from agent_service.tasks.ws import Connection, encode, error_of, parse
from agent_service.tasks.ws_messages import Auth, Error

log = get_logger(__name__)

AUTH_TIMEOUT = 5.0
HARD_STOP_GRACE = 30.0  # past its lifetime a connection is cut, even one whose client stopped reading
SCOPE = "tasks:read"


class _Close(Exception):
    """End the connection: an `error` message (if any), then this close code."""

    def __init__(self, code: int, error: Error | None, reason: str = "") -> None:
        super().__init__(code)
        self.code, self.error, self.reason = code, error, reason or (error.code if error else "")


async def _authenticated(deps: Deps, ws: WebSocket, socket: StarletteSocket) -> Caller:
    """The caller of the upgrade's header, or of the first message."""
    caller = caller_of(ws)
    if caller is not None:
        return caller
    try:
        async with asyncio.timeout(AUTH_TIMEOUT):
            frame = await socket.receive()
    except TimeoutError:
        raise _Close(CLOSE_UNAUTHORIZED, Error(code="auth_timeout", status=401, detail=(
            f"Send {{\"type\": \"auth\", \"token\": …}} within {AUTH_TIMEOUT:g} s of connecting."))) from None
    if frame is None:
        raise _Close(CLOSE_UNAUTHORIZED, None, "gone")
    message = parse(frame)
    if not isinstance(message, Auth):
        code = CLOSE_TOO_BIG if isinstance(message, Error) and message.code == "message_too_large" \
            else CLOSE_UNAUTHORIZED
        raise _Close(code, Error(code="auth_required", status=401, detail=(
            "Authenticate first: a credential header on the upgrade, or the message "
            "{\"type\": \"auth\", \"token\": \"<JWT or API key>\"}.")))
    token = message.token.strip()
    try:
        # a JWT has three dot-separated parts; an API key (sk_live_…) has no dot
        if token.count(".") == 2:
            return await identity.principal_from_bearer(deps, token)
        return await identity.principal_from_api_key(deps, token)
    except AppError as exc:
        if exc.status in (400, 401):
            try:  # guessing tokens here costs what it costs over HTTP
                await ws.app.state.on_auth_failure(ws.scope)
            except TooManyRequests as limited:
                raise _Close(CLOSE_TRY_LATER, error_of(limited)) from None
        raise _Close(CLOSE_UNAUTHORIZED, error_of(exc)) from None


async def task_socket(ws: WebSocket) -> None:
    deps: Deps = ws.app.state.deps
    settings = deps.settings
    if not origin_allowed(ws.scope, settings.cors_origin_list, settings.public_base_url):
        log.info("ws.refused", reason="origin", origin=ws.headers.get("origin", "")[:200])
        await refuse(ws)
        return
    await ws.accept()
    socket = StarletteSocket(ws)
    started, user_id, subscriptions = time.monotonic(), None, 0
    code, reason = 1000, ""
    try:
        caller = await _authenticated(deps, ws, socket)
        user_id = caller.user_id
        if not caller.has_scope(SCOPE):
            raise _Close(CLOSE_FORBIDDEN, Error(code="insufficient_scope", status=403,
                                                detail=f"Following tasks needs the `{SCOPE}` scope."))
        try:
            await charge(ws, Limits(), caller)
            async with deps.part(StreamSlots.of).hold(caller.user_id):
                lifetime = settings.stream_max_seconds
                connection = Connection(deps, socket, caller, deadline=asyncio.get_running_loop().time() + lifetime,
                                        charge=lambda: charge(ws, Limits(), caller))
                try:
                    async with asyncio.timeout(lifetime + HARD_STOP_GRACE):
                        ended = await connection.run()
                finally:
                    subscriptions = connection.subscriptions
        except AppError as exc:  # over a bound (429), or Redis is down (503): come back later
            raise _Close(CLOSE_TRY_LATER, error_of(exc)) from None
        if ended is None:
            code, reason = 1005, "client left"
            return
        code, reason = ended
        await socket.close(code, reason)
    except _Close as close:
        code, reason = close.code, close.reason
        if close.error is not None:
            with contextlib.suppress(SocketGone):  # the client may be gone; the close is best effort too
                await socket.send(encode(close.error))
        await socket.close(close.code, close.reason)
    except TimeoutError:  # the hard stop: a client that stopped reading held a send past the lifetime
        code, reason = CLOSE_INTERNAL, "timed out"
        await socket.close(code, "timed out")
    except Exception:  # broad: the last resort of one connection; it must end with a close, never a crash
        log.exception("ws.failed")
        code, reason = CLOSE_INTERNAL, "internal error"
        await socket.close(code, "internal error")
    finally:
        log.info("ws.closed", user_id=user_id, code=code, reason=reason, subscriptions=subscriptions,
                 duration_s=round(time.monotonic() - started, 2))


routes = [WebSocketRoute("/ws", task_socket)]
