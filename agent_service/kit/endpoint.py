"""Operation metadata kept beside each endpoint, read by the OpenAPI builder."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent_service.errors import AppError, Forbidden, Unauthorized
from agent_service.kit import api_limits as rate_limits

F = TypeVar("F", bound=Callable[..., Any])


def operation(
    *,
    summary: str,
    description: str,
    tag: str,
    request: type | None = None,
    response: type | None = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    public: bool = False,
    streams: bool = False,
    scope: str | None = None,
    rate_limit: str | None = "default",
    local_fallback: bool = False,
    query: type | None = None,
    media_type: str | None = None,
    headers: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """`rate_limit`: "api" (per principal and tier), "stream" (tighter), "login" (per client IP)
    or None; "default" means "api" for authenticated operations and none for public ones.
    `local_fallback`: with Redis down, limit in process memory instead of failing closed."""
    def mark(fn: F) -> F:
        fn.__openapi__ = {  # type: ignore[attr-defined]
            "summary": summary, "description": description, "tag": tag, "request": request,
            "response": response, "status": status, "errors": errors, "public": public,
            "streams": streams, "scope": scope, "operation_id": fn.__name__,
            "rate_limit": (None if public else "api") if rate_limit == "default" else rate_limit,
            "local_fallback": local_fallback,
            "query": query, "media_type": media_type, "headers": headers,
        }
        return fn

    return mark


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
