"""/api/v1/agents/tasks: status, list, cancel and live events of background tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agent_service.errors import AppError
from agent_service.kit import context
from agent_service.kit.endpoint import operation, route
from agent_service.kit.io import json_response, read_query
from agent_service.tasks import follow as task_events
from agent_service.tasks import service as tasks
from agent_service.tasks.live import TaskEvent
from agent_service.tasks.schemas import TaskPage, TaskQuery, TaskStatus

_json = msgspec.json.Encoder()


@operation(
    summary="Get a task's status",
    tag="Background Jobs",
    response=TaskStatus,
    errors=(401, 403, 404, 503),
    scope="tasks:read",
    description="State (`PENDING`…`REVOKED`), human status, progress 0-100, the result once "
    "`SUCCESS` (kept JOB_RESULT_TTL seconds) and the error once `FAILURE`. "
    "Someone else's task is a 404.",
)
async def get_task(request: Request) -> Response:
    status = await tasks.get_status(
        context.deps(request),
        request.path_params["task_id"],
        owner_id=context.owner_id(request),
        is_admin=context.is_admin(request),
    )
    return json_response(status, headers={"Cache-Control": "no-store"})


@operation(
    summary="List tasks",
    tag="Background Jobs",
    response=TaskPage,
    query=TaskQuery,
    errors=(401, 403, 422),
    scope="tasks:read",
    description="My tasks, newest first, filtered by `state` and `agent`; admins see everyone's and may "
    "filter by `owner`. Paginate with `limit` and the opaque `cursor`.",
)
async def list_tasks(request: Request) -> Response:
    q = read_query(request, TaskQuery)
    page = await tasks.list_tasks(
        context.deps(request), q, owner_id=context.owner_id(request), is_admin=context.is_admin(request)
    )
    return json_response(page)


@operation(
    summary="Cancel a task",
    tag="Background Jobs",
    response=TaskStatus,
    errors=(401, 403, 404, 409, 503),
    scope="tasks:cancel",
    description="A queued or deferred task never starts; a running one stops within a second and keeps "
    "any partial stream output. Answers 200 once `REVOKED`, 202 while the worker is stopping "
    "it; a finished task is a 409.",
)
async def cancel_task(request: Request) -> Response:
    context.audit(request, "CANCEL", "task", request.path_params["task_id"])
    status = await tasks.cancel(
        context.deps(request),
        request.path_params["task_id"],
        owner_id=context.owner_id(request),
        is_admin=context.is_admin(request),
    )
    return json_response(status, status=200 if status.state == "REVOKED" else 202)


def _sse(event: TaskEvent | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    head = f"id: {event.id}\n" if event.id else ""
    return f"{head}event: {event.type}\n".encode() + b"data: " + _json.encode(event.data) + b"\n\n"


async def _body(events: AsyncIterator[TaskEvent | None]) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    try:
        async for event in events:
            yield _sse(event)
    except AppError as exc:
        # the 200 and its headers are gone: end the stream with an error event, not a broken connection
        yield f"event: error\ndata: {_json.encode({'code': exc.code, 'detail': exc.detail}).decode()}\n\n".encode()


@operation(
    summary="Follow a task live",
    tag="Background Jobs",
    streams=True,
    headers=("Last-Event-ID",),
    errors=(401, 403, 404, 422, 503),
    scope="tasks:read",
    description="Server-Sent Events of state changes (`state`), `progress` and stream `chunk`s as they "
    "happen, ending when the task ends. Every event has an `id`; reconnect with "
    "`Last-Event-ID` to resume without loss or duplicates. Connecting after the end replays "
    "the history.",
)
async def task_events_stream(request: Request) -> Response:
    events = await task_events.open_events(
        context.deps(request),
        request.path_params["task_id"],
        owner_id=context.owner_id(request),
        is_admin=context.is_admin(request),
        last_event_id=request.headers.get("last-event-id"),
    )
    return StreamingResponse(
        _body(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


routes = [
    route("/agents/tasks", list_tasks, ["GET"]),
    route("/agents/tasks/{task_id}", get_task, ["GET"]),
    route("/agents/tasks/{task_id}/cancel", cancel_task, ["POST"]),
    route("/agents/tasks/{task_id}/events", task_events_stream, ["GET"]),
]
