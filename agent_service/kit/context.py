"""Per-request accessors: the process's Deps, the request id, the caller, and the audit request."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from agent_service.errors import Forbidden, Unauthorized
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller, caller_of


def deps(request: Request) -> Deps:
    d: Deps = request.app.state.deps
    return d


def request_id(request: Request) -> str | None:
    rid: str | None = request.scope.get("state", {}).get("request_id")
    return rid


def caller(request: Request) -> Caller:
    """The authenticated caller (routes are secured by default, so one is always there)."""
    found = caller_of(request)
    if found is None:
        raise Unauthorized("Authentication required.")
    return found


def owner_id(request: Request) -> str:
    return caller(request).user_id


def require_session_scope(request: Request, session_id: str | None) -> None:
    """A `session_id` reads and extends a conversation's history: that is the `sessions` scope's,
    not `agents:invoke`'s (a key that may only invoke must not read past conversations)."""
    if session_id is not None and not caller(request).has_scope("sessions"):
        raise Forbidden("Using `session_id` needs the `sessions` scope (it reads and extends the session's "
                        "history).", code="insufficient_scope")


def is_admin(request: Request) -> bool:
    return caller(request).is_admin


def audit(request: Request, action: str, resource_type: str, resource_id: str | None = None,
          **metadata: Any) -> None:
    """Ask for an audit entry for this request; it is written when the response is done, with the
    final status (a LOGIN that ends in 401 is recorded as FAILED_AUTH)."""
    request.scope.setdefault("state", {})["audit"] = (action, resource_type, resource_id, metadata)


def audit_request(scope: Any) -> tuple[str, str, str | None, dict[str, Any]] | None:
    """What `audit()` asked for during this request, if anything."""
    found: tuple[str, str, str | None, dict[str, Any]] | None = scope.get("state", {}).get("audit")
    return found
