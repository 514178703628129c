"""AG-UI over HTTP: POST /api/v1/ag-ui/{agent_id} takes a RunAgentInput and answers the run as
Server-Sent Events, each event named by its AG-UI type with the event as its JSON `data`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context, sse
from agent_service.kit.endpoint import Docs, Limits, Scoped, endpoint, route
from agent_service.kit.io import read_json
from agent_service.protocols import agui
from agent_service.protocols import agui_schemas as ag


async def _items(events: AsyncIterator[Any]) -> AsyncIterator[sse.Item]:
    async for event in events:
        yield sse.Item(event)


@endpoint(
    auth=Scoped("agents:invoke"), limits=Limits(kind="stream", local_fallback=True),
    docs=Docs(
        summary="Run an agent for an AG-UI front end", tag="Protocols", request=ag.RunAgentInput,
        events=ag.EVENTS, errors=(400, 404, 413, 415, 422),
        description="AG-UI (protocol 1.0): the last `user` message of `messages` goes to the agent; the answer "
        "streams back as `RUN_STARTED`, `TEXT_MESSAGE_START`, one `TEXT_MESSAGE_CONTENT` per chunk, "
        "`TEXT_MESSAGE_END` and `RUN_FINISHED`, or ends with `RUN_ERROR` (`message`, `code`) if the agent fails. "
        "With the `sessions` scope `threadId` is your conversation session (the agent gets its history); "
        "`forwardedProps.metadata` is the agent's metadata. Disconnecting stops the agent; a run lasts at most "
        "STREAM_TIME_LIMIT seconds.",
    ),
)
async def agui_run(request: Request) -> Response:
    deps = context.deps(request)
    agent_id = request.path_params["agent_id"]
    context.audit(request, "EXECUTE", "agent", agent_id, protocol="ag-ui")
    body = await read_json(request, ag.RunAgentInput, limit=deps.settings.max_body_bytes)
    context.audit(request, "EXECUTE", "agent", agent_id, protocol="ag-ui", thread_id=body.thread_id,
                  run_id=body.run_id)
    return sse.response(_items(agui.run(deps, agent_id, body, context.caller(request))))


routes = [route("/ag-ui/{agent_id}", agui_run, ["POST"])]
