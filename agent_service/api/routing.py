"""Route construction with authentication by default.

Every endpoint is wrapped: unless its `operation(public=True)`, an anonymous caller gets 401
(with WWW-Authenticate) and a caller lacking the operation's scope gets 403 naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_service.errors import Forbidden, Unauthorized

Endpoint = Callable[[Request], Awaitable[Response]]
WWW_AUTHENTICATE = 'Bearer realm="agent-service", ApiKey header="X-API-Key"'


def secured(endpoint: Endpoint) -> Endpoint:
    meta = getattr(endpoint, "__openapi__", {})
    if meta.get("public"):
        return endpoint
    scope = meta.get("scope")

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        user = request.scope.get("user")
        principal = getattr(user, "principal", None)
        if principal is None:
            raise Unauthorized("Authentication required: send a bearer token or an X-API-Key.",
                               headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        if scope and not principal.has_scope(scope):
            raise Forbidden(f"This operation needs the `{scope}` scope.", code="insufficient_scope")
        return await endpoint(request)

    wrapper.__secured__ = True  # type: ignore[attr-defined]
    return wrapper


def route(path: str, endpoint: Endpoint, methods: list[str]) -> Route:
    return Route(path, secured(endpoint), methods=methods)
