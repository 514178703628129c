"""/api/v1/agents: list, invoke and stream (SSE). Queued invocations (`…/invoke-async`) are in
tasks/endpoints.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from agent_service.agents import service as invocations
from agent_service.agents.schemas import AgentList, InvokeRequest, InvokeResponse, StreamChunk, StreamDone
from agent_service.agents.service import StreamEvent
from agent_service.kit import context, sse
from agent_service.kit.endpoint import Docs, Limits, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_json

INVOKE_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 502, 503)


def agent_id(request: Request) -> str | None:
    value: str | None = request.path_params.get("agent_id")
    return value


@endpoint(
    auth=Scoped(),
    docs=Docs(
        summary="List agents", tag="Agents", response=AgentList, errors=(401,),
        description="Every registered agent, whether it is available on this server and whether it streams.",
    ),
)
async def list_agents(request: Request) -> Response:
    return json_response(invocations.list_agents(context.deps(request)))


@endpoint(
    auth=Scoped("agents:invoke"), limits=Limits(local_fallback=True),
    docs=Docs(
        summary="Invoke an agent", tag="Agents", request=InvokeRequest, response=InvokeResponse,
        errors=(*INVOKE_ERRORS, 504),
        description="Run the agent (the default one when no id is given) and wait for its answer. A "
        "`session_id` (the caller's own conversation; the same id of two users is two sessions) also needs "
        "the `sessions` scope.",
    ),
)
async def invoke(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "EXECUTE", "agent", agent_id(request) or deps.settings.default_agent, mode="sync")
    body = await read_json(request, InvokeRequest, limit=deps.settings.max_body_bytes)
    context.require_session_scope(request, body.session_id)
    return json_response(await invocations.invoke(deps, agent_id(request), body, owner_id=context.owner_id(request)))


async def _items(events: AsyncIterator[StreamEvent]) -> AsyncIterator[sse.Item]:
    async for event in events:
        yield sse.Item(event, str(event.index) if isinstance(event, StreamChunk) else None)


@endpoint(
    auth=Scoped("agents:invoke"), limits=Limits(kind="stream", local_fallback=True),
    docs=Docs(
        summary="Stream an agent's answer", tag="Agents", request=InvokeRequest, errors=INVOKE_ERRORS,
        events=(StreamChunk, StreamDone, sse.StreamError),
        description="Server-Sent Events: `chunk` events with `{index, content}`, then `done` with the "
        "metadata, or `error`. Disconnecting stops the agent. A stream lasts at most STREAM_TIME_LIMIT "
        "seconds: then it ends with an `error` event of code `stream_time_limit`. A `session_id` needs the "
        "`sessions` scope.",
    ),
)
async def stream(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "EXECUTE", "agent", agent_id(request) or deps.settings.default_agent, mode="stream")
    body = await read_json(request, InvokeRequest, limit=deps.settings.max_body_bytes)
    context.require_session_scope(request, body.session_id)
    events = await invocations.open_stream(deps, agent_id(request), body, owner_id=context.owner_id(request))
    return sse.response(_items(events))


routes = [
    route("/agents", list_agents, ["GET"]),
    route("/agents/invoke", invoke, ["POST"]),
    route("/agents/stream", stream, ["POST"]),
    route("/agents/{agent_id}/invoke", invoke, ["POST"]),
    route("/agents/{agent_id}/stream", stream, ["POST"]),
]
