"""Per-request accessors: the service container and the caller."""

from __future__ import annotations

from starlette.requests import Request

from agent_service.services.deps import Deps


def deps(request: Request) -> Deps:
    d: Deps = request.app.state.deps
    return d


def request_id(request: Request) -> str | None:
    rid: str | None = request.scope.get("state", {}).get("request_id")
    return rid


def owner_id(request: Request) -> str | None:
    """The principal's user id once authentication is installed; None (shared) before that."""
    user = request.scope.get("user")
    return getattr(user, "user_id", None)


def is_admin(request: Request) -> bool:
    user = request.scope.get("user")
    return bool(getattr(user, "is_admin", False))
