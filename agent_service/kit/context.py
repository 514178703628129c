"""Per-request accessors: the service container and the caller."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from agent_service.audit.schemas import AuditAction
from agent_service.errors import Unauthorized
from agent_service.identity.schemas import Principal
from agent_service.kit.deps import Deps


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


def audit(request: Request, action: AuditAction, resource_type: str, resource_id: str | None = None,
          **metadata: Any) -> None:
    """Ask for an audit entry for this request; the middleware writes it with the final status
    (a LOGIN that ends in 401 is recorded as FAILED_AUTH)."""
    request.scope.setdefault("state", {})["audit"] = (action, resource_type, resource_id, metadata)
