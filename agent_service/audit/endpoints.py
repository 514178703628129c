"""/api/v1/audit-logs: read the audit log (admins, or keys with `audit:read`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.audit import service as audit
from agent_service.audit.schemas import AuditPage, AuditQuery, AuditRange, AuditRecord, AuditStats
from agent_service.errors import NotFound
from agent_service.kit import context
from agent_service.kit.endpoint import operation, route
from agent_service.kit.io import json_response, read_query

SCOPE = "audit:read"


@operation(
    summary="Search the audit log",
    tag="Audit Logs",
    response=AuditPage,
    query=AuditQuery,
    scope=SCOPE,
    errors=(401, 403, 422),
    description="Newest first. Filter by actor, action, resource type and id, request id, status and a "
    "time range (`since` inclusive, `until` exclusive, RFC 3339 with offset); paginate with "
    "`limit` and the opaque `cursor`.",
)
async def list_logs(request: Request) -> Response:
    return json_response(await audit.list_logs(context.deps(request).db, read_query(request, AuditQuery)))


@operation(
    summary="Audit totals",
    tag="Audit Logs",
    response=AuditStats,
    query=AuditRange,
    scope=SCOPE,
    errors=(401, 403, 422),
    description="Totals by action and by resource type, and unique actors, over an optional range.",
)
async def stats(request: Request) -> Response:
    q = read_query(request, AuditRange)
    return json_response(await audit.stats(context.deps(request).db, since=q.since, until=q.until))


@operation(
    summary="Get an audit entry",
    tag="Audit Logs",
    response=AuditRecord,
    scope=SCOPE,
    errors=(401, 403, 404),
    description="One entry by its id.",
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
