"""Operation metadata kept beside each endpoint, read by the OpenAPI builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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
