"""Route construction with authentication and rate limits by default.

Every endpoint is wrapped: unless its `operation(public=True)`, an anonymous caller gets 401
(with WWW-Authenticate) and a caller lacking the operation's scope gets 403 naming it. Then
the operation's rate limit applies, and its headers go on the response, errors included.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_service.api import rate_limits
from agent_service.errors import AppError, Forbidden, Unauthorized

Endpoint = Callable[[Request], Awaitable[Response]]
WWW_AUTHENTICATE = 'Bearer realm="agent-service", ApiKey header="X-API-Key"'


def secured(endpoint: Endpoint) -> Endpoint:
    meta = getattr(endpoint, "__openapi__", {})
    public = bool(meta.get("public"))
    scope = meta.get("scope")
    limit_kind = meta.get("rate_limit")
    if public and not limit_kind:
        return endpoint

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        principal = getattr(request.scope.get("user"), "principal", None)
        if not public:
            if principal is None:
                raise Unauthorized("Authentication required: send a bearer token or an X-API-Key.",
                                   headers={"WWW-Authenticate": WWW_AUTHENTICATE})
            if scope and not principal.has_scope(scope):
                raise Forbidden(f"This operation needs the `{scope}` scope.", code="insufficient_scope")
        limit_headers: dict[str, str] = {}
        if limit_kind:
            limit_headers = await rate_limits.check(request, request.app.state.deps, limit_kind, principal,
                                                    local_fallback=bool(meta.get("local_fallback")))
        try:
            response = await endpoint(request)
        except AppError as exc:
            exc.headers = {**limit_headers, **exc.headers}
            raise
        response.headers.update(limit_headers)
        return response

    wrapper.__secured__ = not public  # type: ignore[attr-defined]
    return wrapper


def route(path: str, endpoint: Endpoint, methods: list[str]) -> Route:
    return Route(path, secured(endpoint), methods=methods)
