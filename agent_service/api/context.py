"""Per-request accessors: the service container and the caller."""

from __future__ import annotations

from starlette.requests import Request

from agent_service.auth.principal import Principal
from agent_service.errors import Unauthorized
from agent_service.services.deps import Deps


def deps(request: Request) -> Deps:
    d: Deps = request.app.state.deps
    return d


def request_id(request: Request) -> str | None:
    rid: str | None = request.scope.get("state", {}).get("request_id")
    return rid


def principal(request: Request) -> Principal:
    """The authenticated caller (routes are secured by default, so one is always there)."""
    p: Principal | None = getattr(request.scope.get("user"), "principal", None)
    if p is None:
        raise Unauthorized("Authentication required.")
    return p


def owner_id(request: Request) -> str:
    return principal(request).user_id


def is_admin(request: Request) -> bool:
    return principal(request).is_admin
