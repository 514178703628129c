"""An AG-UI run over our agents: the conversation's last user message goes to the agent's stream
(as POST /agents/{id}/stream runs it: the same limits, and disconnecting stops the agent), and
its chunks come back as one streamed assistant message between RUN_STARTED and RUN_FINISHED.

The thread is our conversation session when the caller holds the `sessions` scope (the agent then
gets the session's history, and the exchange joins it); without it the run is stateless and the
threadId only echoed. Once RUN_STARTED is out, any failure is RUN_ERROR (AG-UI's error event);
input that is no RunAgentInput is refused before, as the API refuses any bad body.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agent_service.agents import service as agents
from agent_service.agents.schemas import InvokeRequest, StreamChunk, StreamDone
from agent_service.errors import AppError, NotFound, ValidationFailed
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller
from agent_service.kit.io import convert
from agent_service.kit.sse import StreamError
from agent_service.protocols import agui_schemas as ag

PROTOCOL_VERSION = "1.0"
_SESSION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def user_text(run: ag.RunAgentInput) -> str:
    """The last user message's text (its string content, or its text parts joined)."""
    for i in range(len(run.messages) - 1, -1, -1):
        msg = run.messages[i]
        if msg.role != "user":
            continue
        if isinstance(msg.content, str):
            return msg.content
        texts = [p.get("text") for p in msg.content or () if p.get("type") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
        raise ValidationFailed("The last user message has no text.", errors=[
            {"path": f"$.messages[{i}].content", "message": "Expected a string or text parts"}])
    raise ValidationFailed("The run has no user message.", errors=[
        {"path": "$.messages", "message": "Expected a message with role `user`"}])


def request_of(run: ag.RunAgentInput, caller: Caller) -> InvokeRequest:
    """Our invoke body: the user's text, the thread as session (see the module doc), and
    `forwardedProps.metadata` as the agent's metadata."""
    props = run.forwarded_props or {}
    session = run.thread_id if caller.has_scope("sessions") and _SESSION_ID.match(run.thread_id) else None
    body: dict[str, Any] = {"message": user_text(run), "session_id": session}
    if isinstance(props.get("metadata"), dict):
        body["metadata"] = props["metadata"]
    return convert(body, InvokeRequest)


def run(deps: Deps, agent_id: str, run_input: ag.RunAgentInput, caller: Caller) -> AsyncIterator[Any]:
    """The run's events. An unknown agent (404) and input with nothing to run (422) are refused
    before the stream; whatever happens after RUN_STARTED is a RUN_ERROR."""
    if agents.registry(deps).get(agent_id) is None:
        raise NotFound(f"No agent named {agent_id[:100]!r}.", code="agent_not_found")
    return _events(deps, agent_id, run_input, request_of(run_input, caller), caller)


async def _events(deps: Deps, agent_id: str, run_input: ag.RunAgentInput, req: InvokeRequest,
                  caller: Caller) -> AsyncIterator[Any]:
    thread, run_id = run_input.thread_id, run_input.run_id
    yield ag.RunStarted(thread_id=thread, run_id=run_id, protocol_version=PROTOCOL_VERSION)
    try:
        stream = await agents.open_stream(deps, agent_id, req, owner_id=caller.user_id)
    except AppError as exc:
        yield ag.RunError(message=exc.detail, code=exc.code)
        return
    message_id = f"msg-{uuid.uuid4().hex}"
    started = False
    async for event in stream:
        if isinstance(event, StreamChunk):
            if not started:
                started = True
                yield ag.TextMessageStart(message_id=message_id, role="assistant")
            yield ag.TextMessageContent(message_id=message_id, delta=event.content)
        elif isinstance(event, StreamDone):
            if started:
                yield ag.TextMessageEnd(message_id=message_id)
            yield ag.RunFinished(thread_id=thread, run_id=run_id,
                                 result={"chunks": event.chunks, "agentId": agent_id})
            return
        elif isinstance(event, StreamError):
            yield ag.RunError(message=event.detail, code=event.code)
            return
