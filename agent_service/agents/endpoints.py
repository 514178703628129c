"""/api/v1/agents: list, invoke, stream (SSE) and invoke-async."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agent_service.agents import service as invocations
from agent_service.agents.schemas import AgentList, InvokeAsyncRequest, InvokeRequest, InvokeResponse
from agent_service.agents.service import StreamEvent
from agent_service.errors import AppError, ValidationFailed
from agent_service.kit import context
from agent_service.kit.endpoint import operation, route
from agent_service.kit.io import json_response, read_json
from agent_service.tasks.schemas import TaskAccepted

_json = msgspec.json.Encoder()
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _agent_id(request: Request) -> str | None:
    value: str | None = request.path_params.get("agent_id")
    return value


@operation(
    summary="List agents",
    tag="Agents",
    response=AgentList,
    errors=(401,),
    description="Every registered agent, whether it is available on this server and whether it streams.",
)
async def list_agents(request: Request) -> Response:
    return json_response(invocations.list_agents(context.deps(request)))


@operation(
    summary="Invoke an agent",
    tag="Agents",
    request=InvokeRequest,
    response=InvokeResponse,
    errors=(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504),
    scope="agents:invoke",
    local_fallback=True,
    description="Run the agent (the default one when no id is given) and wait for its answer.",
)
async def invoke(request: Request) -> Response:
    deps = context.deps(request)
    agent = _agent_id(request) or deps.settings.default_agent
    context.audit(request, "EXECUTE", "agent", agent, mode="sync")
    body = await read_json(request, InvokeRequest, limit=deps.settings.max_body_bytes)
    return json_response(await invocations.invoke(deps, _agent_id(request), body, owner_id=context.owner_id(request)))


def _sse(event: StreamEvent) -> bytes:
    head = f"event: {event.event}\n"
    if event.event == "chunk":
        head += f"id: {event.data['index']}\n"
    return head.encode() + b"data: " + _json.encode(event.data) + b"\n\n"


async def _sse_body(events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
    # Starlette cancels this generator when the client disconnects; closing `events`
    # then closes the agent's own stream, which stops the agent.
    try:
        async for event in events:
            yield _sse(event)
    except AppError as exc:  # after the 200 is sent, an error can only be an event
        yield _sse(StreamEvent(event="error", data={"code": exc.code, "detail": exc.detail, "status": exc.status}))


@operation(
    summary="Stream an agent's answer",
    tag="Agents",
    request=InvokeRequest,
    streams=True,
    rate_limit="stream",
    errors=(400, 401, 403, 404, 413, 415, 422, 429, 502, 503),
    scope="agents:invoke",
    local_fallback=True,
    description="Server-Sent Events: `chunk` events with `{index, content}`, then `done` with the "
    "metadata, or `error`. Disconnecting stops the agent.",
)
async def stream(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "EXECUTE", "agent", _agent_id(request) or deps.settings.default_agent, mode="stream")
    body = await read_json(request, InvokeRequest, limit=deps.settings.max_body_bytes)
    events = await invocations.open_stream(deps, _agent_id(request), body, owner_id=context.owner_id(request))
    return StreamingResponse(
        _sse_body(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@operation(
    summary="Queue an agent invocation",
    tag="Background Jobs",
    request=InvokeAsyncRequest,
    response=TaskAccepted,
    status=202,
    headers=("Idempotency-Key",),
    errors=(400, 401, 403, 404, 409, 413, 415, 422, 503),
    scope="agents:invoke",
    description="Queue the invocation as a background task and answer at once with its id and "
    "status URL. `stream: true` runs the streaming job, whose chunks are kept. `priority` "
    "orders a backlog (high, normal, low; a job is overtaken only by jobs submitted less than "
    "60 s after it). `run_at` (RFC 3339, at most 7 days ahead) or `delay_seconds` schedule "
    "it. An `Idempotency-Key` header makes retries safe for 24 h: the same key and body "
    "return the original answer; the same key with another body is a 409.",
)
async def invoke_async(request: Request) -> Response:
    deps = context.deps(request)
    agent_id = _agent_id(request) or deps.settings.default_agent
    context.audit(request, "EXECUTE", "agent", agent_id, mode="async")
    body = await read_json(request, InvokeAsyncRequest, limit=deps.settings.max_body_bytes)
    accepted, replayed = await invocations.enqueue(
        deps,
        agent_id,
        body,
        owner_id=context.owner_id(request),
        request_id=context.request_id(request),
        idempotency_key=_idempotency_key(request),
    )
    context.audit(request, "EXECUTE", "agent", agent_id, mode="async", task_id=accepted.task_id, replayed=replayed)
    headers = {"Location": accepted.status_url, **({"Idempotent-Replayed": "true"} if replayed else {})}
    return json_response(accepted, status=202, headers=headers)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            errors=[{"path": "header.Idempotency-Key", "message": "Invalid key"}],
        )
    return key


routes = [
    route("/agents", list_agents, ["GET"]),
    route("/agents/invoke", invoke, ["POST"]),
    route("/agents/stream", stream, ["POST"]),
    route("/agents/invoke-async", invoke_async, ["POST"]),
    route("/agents/{agent_id}/invoke", invoke, ["POST"]),
    route("/agents/{agent_id}/stream", stream, ["POST"]),
    route("/agents/{agent_id}/invoke-async", invoke_async, ["POST"]),
]
