"""/api/v1/agents/{agent_id}/invoke-async and /api/v1/agents/tasks: queue an invocation, then its
status, the list, cancel and live events."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agent_service.agents.schemas import InvokeAsyncRequest
from agent_service.errors import ValidationFailed
from agent_service.identity import service as identity
from agent_service.identity.schemas import StreamToken
from agent_service.kit import context, sse
from agent_service.kit.endpoint import Docs, Link, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_json, read_query
from agent_service.tasks import export, follow, service
from agent_service.tasks.schemas import (
    ChunkEvent,
    EventsQuery,
    ExportQuery,
    ProgressEvent,
    StateEvent,
    TaskAccepted,
    TaskExportRow,
    TaskPage,
    TaskQuery,
    TaskStatus,
)

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
NO_STORE = {"Cache-Control": "no-store"}


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            errors=[{"path": "header.Idempotency-Key", "message": "Invalid key"}],
        )
    return key


@endpoint(
    auth=Scoped("agents:invoke"),
    docs=Docs(
        summary="Queue an agent invocation", tag="Background Jobs", request=InvokeAsyncRequest,
        response=TaskAccepted, status=202, errors=(400, 401, 403, 404, 409, 413, 415, 422, 503),
        headers=("Idempotency-Key",),
        links=(
            Link(name="GetTaskStatus", operation="get_task", parameters={"task_id": "$response.body#/task_id"},
                 description="Poll the queued task's state, progress and result."),
            Link(name="FollowTaskEvents", operation="task_events",
                 parameters={"task_id": "$response.body#/task_id"}, description="Follow the task live (SSE)."),
            Link(name="CancelTask", operation="cancel_task", parameters={"task_id": "$response.body#/task_id"},
                 description="Cancel the task."),
        ),
        description="Queue the invocation as a background task and answer at once with its id and "
        "status URL. `stream: true` runs the streaming job, whose chunks are kept. `priority` "
        "orders a backlog (high, normal, low; a job is overtaken only by jobs submitted less than "
        "120 s after it; a user's jobs already waiting place the next one later, so one user's "
        "burst cannot hold up another's jobs). `run_at` (RFC 3339, at most 7 days ahead) or "
        "`delay_seconds` schedule it. An `Idempotency-Key` header makes retries safe for 24 h: the same key and body "
        "return the original answer; the same key with another body is a 409. A `session_id` needs the "
        "`sessions` scope too.",
    ),
)
async def invoke_async(request: Request) -> Response:
    deps = context.deps(request)
    agent_id = request.path_params.get("agent_id") or deps.settings.default_agent
    context.audit(request, "EXECUTE", "agent", agent_id, mode="async")
    body = await read_json(request, InvokeAsyncRequest, limit=deps.settings.max_body_bytes)
    context.require_session_scope(request, body.session_id)
    caller = context.caller(request)
    accepted, replayed = await service.enqueue(
        deps, agent_id, body, owner_id=caller.user_id, request_id=context.request_id(request),
        idempotency_key=_idempotency_key(request), tier=caller.tier, is_admin=caller.is_admin,
        api_key_id=getattr(caller, "api_key_id", None),
    )
    context.audit(request, "EXECUTE", "agent", agent_id, mode="async", task_id=accepted.task_id, replayed=replayed)
    # the request's own log line (http.request) names its task: one INFO line per submission, not two
    structlog.contextvars.bind_contextvars(task_id=accepted.task_id)
    headers = {"Location": accepted.status_url, **({"Idempotent-Replayed": "true"} if replayed else {})}
    return json_response(accepted, status=202, headers=headers)


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="Get a task's status", tag="Background Jobs", response=TaskStatus, errors=(401, 403, 404, 503),
        # `/agents/tasks/{task_id}` had the shape of `/agents/{agent_id}/invoke`: ambiguous to OpenAPI tools
        moved_from=("/agents/tasks/{task_id}",),
        links=(
            Link(name="FollowTaskEvents", operation="task_events",
                 parameters={"task_id": "$response.body#/task_id"}, description="Follow the task live (SSE)."),
            Link(name="CancelTask", operation="cancel_task", parameters={"task_id": "$response.body#/task_id"},
                 description="Cancel the task."),
        ),
        description="State (`PENDING`…`REVOKED`), human status, progress 0-100, the result once "
        "`SUCCESS` (kept JOB_RESULT_TTL seconds) and the error once `FAILURE`. "
        "Someone else's task is a 404.",
    ),
)
async def get_task(request: Request) -> Response:
    status = await service.get_status(context.deps(request), request.path_params["task_id"],
                                      owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    return json_response(status, headers=NO_STORE)


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="List tasks", tag="Background Jobs", response=TaskPage, query=TaskQuery, errors=(401, 403, 422),
        links=(Link(name="GetFirstTask", operation="get_task",
                    parameters={"task_id": "$response.body#/items/0/task_id"},
                    description="The status of the newest task of the page."),),
        description="My tasks, newest first, filtered by `state` and `agent`; admins see everyone's and may "
        "filter by `owner`. Paginate with `limit` and the opaque `cursor`.",
    ),
)
async def list_tasks(request: Request) -> Response:
    page = await service.list_tasks(context.deps(request), read_query(request, TaskQuery),
                                    owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    return json_response(page, headers=NO_STORE)


@endpoint(
    auth=Scoped("tasks:cancel"),
    docs=Docs(
        summary="Cancel a task", tag="Background Jobs", response=TaskStatus, also=(202,),
        errors=(401, 403, 404, 409, 503),
        description="A queued or deferred task is `REVOKED` at once and never starts (200). A running one "
        "stops within a second and keeps any partial stream output: the answer is then 202 with the "
        "state it is in (`STARTED`), and the task's status or events show `REVOKED` shortly after. "
        "A finished task is a 409.",
    ),
)
async def cancel_task(request: Request) -> Response:
    context.audit(request, "CANCEL", "task", request.path_params["task_id"])
    status = await service.cancel(context.deps(request), request.path_params["task_id"],
                                  owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    if status.state == "REVOKED":
        return json_response(status, headers=NO_STORE)
    # still stopping: follow the task where the Location points
    return json_response(status, status=202, headers={**NO_STORE, "Location": service.status_url(
        context.deps(request), status.task_id)})


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="Follow a task live", tag="Background Jobs", errors=(401, 403, 404, 422, 429, 503),
        events=(StateEvent, ProgressEvent, ChunkEvent, follow.ReconnectEvent, sse.StreamError),
        headers=("Last-Event-ID",), query=EventsQuery,
        description="Server-Sent Events of state changes (`state`), `progress` and stream `chunk`s as they "
        "happen, ending when the task ends. Every event has an `id`; reconnect with "
        "`Last-Event-ID` to resume without loss or duplicates. Connecting after the end replays "
        "the history. Each event carries its `attempt`: chunks of a new attempt start a new answer. "
        "A stream lasts at most STREAM_MAX_SECONDS: it then ends with a `reconnect` event (no `id`) whose "
        "`last_event_id` is the id of the last event sent; reconnecting with that `Last-Event-ID` (an "
        "EventSource does it by itself) gets every later event, none twice. The same event ends a stream "
        "the server lets go (`reason: dropped`). A user may hold STREAM_MAX_PER_USER open streams across "
        "all servers, and a server STREAM_MAX_PER_PROCESS; beyond either the answer is a 429 "
        "`too_many_streams` with `Retry-After`.",
    ),
)
async def task_events(request: Request) -> Response:
    stream = await follow.open_events(
        context.deps(request), request.path_params["task_id"], owner_id=context.owner_id(request),
        is_admin=context.is_admin(request),
        # the query form is for a new EventSource (after a fresh stream token), which cannot set the header
        last_event_id=request.headers.get("last-event-id") or request.query_params.get("last_event_id"),
    )
    return sse.response(stream, retry_ms=1000)


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="Get a stream token for a task", tag="Background Jobs", response=StreamToken, status=201,
        errors=(401, 403, 404),
        description="For browsers: `EventSource` cannot send `X-API-Key` or `Authorization`, so open "
        "`…/tasks/{task_id}/events?token=<token>` instead. The token is signed, read-only, good for this "
        "task's events route only (anywhere else a `token` parameter is ignored) and only for STREAM_TOKEN_TTL "
        "seconds (≤ 60) to start the stream; an open stream goes on. To resume after it expired, get a new "
        "token and add `&last_event_id=<id>`. Never logged.",
    ),
)
async def stream_token(request: Request) -> Response:
    deps, task_id = context.deps(request), request.path_params["task_id"]
    await service.get_record(deps, task_id, owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    token = await identity.stream_token(deps, context.owner_id(request), task_id)
    return json_response(token, status=201, headers=NO_STORE)


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="Export tasks", tag="Background Jobs", query=ExportQuery, response=TaskExportRow,
        media_types=(export.MEDIA_TYPES["jsonl"], export.MEDIA_TYPES["csv"]), errors=(401, 403, 422, 503),
        description="Every task of mine matching the filters, newest first, with its input and its result "
        "(while kept, JOB_RESULT_TTL seconds; `null` after), as a download (`Content-Disposition: attachment; "
        "filename=\"tasks-<date>.<format>\"`). `format=jsonl` (the default): one JSON `TaskExportRow` per "
        "line. `format=csv`: a header line, then one row per task with the same columns, `result` as JSON "
        "and its `content` in `result_content`; a cell that a spreadsheet would run as a formula (starting "
        "with = + - @) begins with `'`. The body streams, so any number of tasks can be exported; one that "
        "fails midway ends without completing the transfer. Admins export everyone's, or one user's with "
        "`owner`.",
    ),
)
async def export_tasks(request: Request) -> Response:
    query = read_query(request, ExportQuery)
    context.audit(request, "EXPORT", "task", None, format=query.format,
                  filters={k: v for k, v in msgspec.to_builtins(query).items() if v is not None and k != "format"})
    opened = await export.open_export(context.deps(request), query, owner_id=context.owner_id(request),
                                      is_admin=context.is_admin(request))
    requested = context.audit_request(request.scope)
    audit_meta = requested[3] if requested else {}

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in opened.chunks():
                yield chunk
        finally:  # the audit entry is written when the answer is done: with what was sent
            audit_meta.update(rows=opened.rows, complete=opened.complete)

    disposition = f'attachment; filename="{opened.filename}"'
    return StreamingResponse(body(), media_type=opened.media_type,
                             headers={**NO_STORE, "Content-Disposition": disposition})


routes = [
    # before the agent routes: "/agents/tasks/..." must not be taken for an agent id
    route("/agents/tasks", list_tasks, ["GET"]),
    # before `{task_id}`: "export" is no task id
    route("/agents/tasks/export", export_tasks, ["GET"]),
    route("/agents/tasks/{task_id}", get_task, ["GET"]),
    route("/agents/tasks/{task_id}/status", get_task, ["GET"]),
    route("/agents/tasks/{task_id}/cancel", cancel_task, ["POST"]),
    route("/agents/tasks/{task_id}/events", task_events, ["GET"]),
    route("/agents/tasks/{task_id}/stream-token", stream_token, ["POST"]),
    route("/agents/invoke-async", invoke_async, ["POST"]),
    route("/agents/{agent_id}/invoke-async", invoke_async, ["POST"]),
]
