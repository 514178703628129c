"""/api/v1/audit-logs: read the audit log (admins, or keys with `audit:read`); and the request hook
that writes the entry an endpoint asked for, once its final status is known."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from agent_service.audit import service as audit
from agent_service.audit.schemas import AuditPage, AuditQuery, AuditRange, AuditRecord, AuditStats
from agent_service.audit.service import audit_entry
from agent_service.errors import NotFound
from agent_service.kit import context
from agent_service.kit.client_ip import client_ip
from agent_service.kit.endpoint import Docs, Link, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_query

SCOPE = "audit:read"


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Search the audit log", tag="Audit Logs", response=AuditPage, query=AuditQuery,
        errors=(401, 403, 422),
        links=(Link(name="GetFirstEntry", operation="get_log", parameters={"log_id": "$response.body#/items/0/id"},
                    description="The newest entry of the page."),),
        description="Newest first. Filter by actor, action, resource type and id, request id, status and a "
        "time range (`since` inclusive, `until` exclusive, RFC 3339 with offset); paginate with "
        "`limit` and the opaque `cursor`.",
    ),
)
async def list_logs(request: Request) -> Response:
    return json_response(await audit.list_logs(context.deps(request).db, read_query(request, AuditQuery)))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Audit totals", tag="Audit Logs", response=AuditStats, query=AuditRange, errors=(401, 403, 422),
        description="Totals by action and by resource type, and unique actors, over an optional range.",
    ),
)
async def stats(request: Request) -> Response:
    q = read_query(request, AuditRange)
    return json_response(await audit.stats(context.deps(request).db, since=q.since, until=q.until))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Get an audit entry", tag="Audit Logs", response=AuditRecord, errors=(401, 403, 404),
        description="One entry by its id.",
    ),
)
async def get_log(request: Request) -> Response:
    raw = request.path_params["log_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"No audit entry with id {raw!r}.", code="audit_log_not_found")
    return json_response(await audit.get_log(context.deps(request).db, int(raw)))


routes = [
    route("/audit-logs", list_logs, ["GET"]),
    route("/audit-logs/stats", stats, ["GET"]),
    route("/audit-logs/{log_id}", get_log, ["GET"]),
]


def record_request(scope: Scope, status: int) -> None:
    """The app's RequestContextMiddleware calls this when a response is done. Every 401 is
    recorded (FAILED_AUTH) even if no endpoint ran; a LOGIN that failed is one too."""
    requested = context.audit_request(scope)
    if requested is None and status != 401:
        return
    app = scope.get("app")
    deps = getattr(getattr(app, "state", None), "deps", None)
    if app is None or deps is None:
        return
    action, resource_type, resource_id, metadata = requested or ("FAILED_AUTH", "auth", None, {})
    if status == 401 or (action == "LOGIN" and status >= 400):
        action = "FAILED_AUTH"
    headers = dict(scope.get("headers", []))
    entry = audit_entry(
        action, resource_type, principal=getattr(scope.get("user"), "principal", None),  # type: ignore[arg-type]
        resource_id=resource_id, request_id=scope.get("state", {}).get("request_id"), method=scope.get("method"),
        path=scope.get("path"), status=status, client_ip=client_ip(scope, getattr(app.state, "trusted_proxies", [])),
        user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:300] or None, metadata=metadata or {},
    )
    if action == "FAILED_AUTH":
        audit.record_failed_auth(deps, entry)  # a flood of failures is a few rows, not one each
    else:
        audit.record(deps, entry)
