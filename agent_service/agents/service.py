"""Invoke an agent: synchronously, or as a stream of chunks (queued invocations are tasks')."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Protocol

from agent_service.agents.registry import AgentRegistry
from agent_service.agents.schemas import (
    Agent,
    AgentError,
    AgentInfo,
    AgentInput,
    AgentList,
    AgentUnavailable,
    InvalidAgentInput,
    InvokeRequest,
    InvokeResponse,
    PermanentAgentError,
    StreamChunk,
    StreamDone,
    StreamMeta,
    TransientAgentError,
    missing_settings,
    unavailable_reason,
)
from agent_service.errors import AgentFailed, AppError, GatewayTimeout, NotFound, ServiceUnavailable, ValidationFailed
from agent_service.kit import ids
from agent_service.kit.deps import Deps
from agent_service.kit.sse import StreamError
from agent_service.logging import get_logger
from agent_service.sessions.schemas import ChatMessage
from agent_service.sessions.service import SessionService

StreamEvent = StreamChunk | StreamDone | StreamError

log = get_logger(__name__)


class Meter(Protocol):
    """How a synchronous call is metered: `before` may refuse it (a budget), `after` records what
    it used (`metadata` of its output; None: it ended without an answer). The entry points provide
    the usage domain's; unmetered by default."""

    async def before(self, owner_id: str, ref: str) -> None: ...

    async def after(self, owner_id: str, ref: str, agent_id: str, metadata: dict[str, Any] | None) -> None: ...


class _Unmetered:
    async def before(self, owner_id: str, ref: str) -> None:
        return None

    async def after(self, owner_id: str, ref: str, agent_id: str, metadata: dict[str, Any] | None) -> None:
        return None


def meter(deps: Deps) -> Meter:
    return _Unmetered()


def registry(deps: Deps) -> AgentRegistry:
    """This process's agents (built once from the settings)."""
    return deps.part(AgentRegistry.of)


def list_agents(deps: Deps) -> AgentList:
    return AgentList(
        agents=[
            AgentInfo(id=a.name, description=a.description, available=a.available, streaming=True,
                      unavailable_reason=None if a.available else unavailable_reason(a),
                      missing_settings=[] if a.available else list(missing_settings(a)))
            for a in registry(deps).all()
        ],
        default_agent=deps.settings.default_agent,
    )


def resolve_agent(deps: Deps, agent_id: str | None) -> Agent:
    name = agent_id or deps.settings.default_agent
    agent = registry(deps).get(name)
    if agent is None:
        raise NotFound(f"No agent named {name!r}.", code="agent_not_found")
    if not agent.available:
        # a configuration state, not an outage: no Retry-After, and the code says so
        raise ServiceUnavailable(unavailable_reason(agent), code="agent_not_configured")
    return agent


async def _input(deps: Deps, agent: Agent, req: InvokeRequest, owner_id: str) -> AgentInput:
    history: list[ChatMessage] = []
    if req.session_id:
        sessions = SessionService.from_deps(deps)
        await sessions.check_usable(owner_id, req.session_id)
        history = await sessions.history_for(owner_id, req.session_id, agent.name)
    return AgentInput(message=req.message, session_id=req.session_id, metadata=dict(req.metadata or {}),
                      history=history)


async def _remember(deps: Deps, agent: Agent, req: InvokeRequest, owner_id: str, reply: str) -> None:
    if req.session_id:
        await SessionService.from_deps(deps).record_exchange(owner_id, req.session_id, agent.name, req.message, reply)


async def invoke(deps: Deps, agent_id: str | None, req: InvokeRequest, *, owner_id: str) -> InvokeResponse:
    agent = resolve_agent(deps, agent_id)
    data = await _input(deps, agent, req, owner_id)
    ref, metered = ids.time_ordered(), deps.part(meter)
    await metered.before(owner_id, ref)
    out = None
    try:
        async with asyncio.timeout(deps.settings.sync_invoke_timeout):
            out = await agent.invoke(data)
    except TimeoutError:
        raise GatewayTimeout("The agent did not answer in time; use invoke-async for long work.") from None
    except AgentError as exc:
        raise to_app_error(exc) from None
    finally:  # the budget hold is settled however the call ends (no usage when it failed)
        await metered.after(owner_id, ref, agent.name, out.metadata if out is not None else None)
    await _remember(deps, agent, req, owner_id, out.content)
    return InvokeResponse(response=out.content, metadata={**out.metadata, "agent_id": agent.name})


async def open_stream(
    deps: Deps, agent_id: str | None, req: InvokeRequest, *, owner_id: str
) -> AsyncIterator[StreamEvent]:
    """Start the agent's stream and wait for its first item, so that bad input or an unavailable
    agent is still an ordinary HTTP error; afterwards failures become an `error` event."""
    agent = resolve_agent(deps, agent_id)
    data = await _input(deps, agent, req, owner_id)
    ref, metered = ids.time_ordered(), deps.part(meter)
    await metered.before(owner_id, ref)  # refused (budget) before the agent's stream exists
    # one deadline for the whole stream: a slow-dripping agent cannot hold a connection forever
    deadline = asyncio.get_running_loop().time() + deps.settings.stream_time_limit
    source: AsyncIterator[Any] | None = None
    try:
        source = agent.stream(data)
        async with asyncio.timeout_at(deadline):
            first = await anext(source, None)
    except BaseException as exc:  # broad: any end before the first item closes the agent and frees the hold
        if source is not None:
            await source.aclose()  # type: ignore[attr-defined]
        await metered.after(owner_id, ref, agent.name, None)
        if isinstance(exc, TimeoutError):
            raise GatewayTimeout("The agent did not start answering within STREAM_TIME_LIMIT.") from None
        if isinstance(exc, AgentError):
            raise to_app_error(exc) from None
        raise

    async def settle(meta: dict[str, Any] | None) -> None:
        await metered.after(owner_id, ref, agent.name, meta)

    return _events(agent.name, source, first, deadline=deadline,
                   remember=lambda text: _remember(deps, agent, req, owner_id, text), settle=settle)


async def _events(
    agent_name: str, source: AsyncIterator[Any], first: Any, *, deadline: float,
    remember: Callable[[str], Awaitable[None]], settle: Callable[[dict[str, Any] | None], Awaitable[None]],
) -> AsyncIterator[StreamEvent]:
    meta: dict[str, Any] = {"agent_id": agent_name}
    ended: list[dict[str, Any] | None] = [None]  # the metadata once the stream completed
    try:
        async for event in _relay(agent_name, source, first, deadline=deadline, remember=remember, meta=meta):
            if isinstance(event, StreamDone):
                ended[0] = meta
            yield event
    finally:  # also a client gone mid-stream: its hold goes (the tokens of an unfinished answer are unknown)
        await settle(ended[0])


async def _relay(
    agent_name: str, source: AsyncIterator[Any], first: Any, *, deadline: float,
    remember: Callable[[str], Awaitable[None]], meta: dict[str, Any],
) -> AsyncIterator[StreamEvent]:
    index = 0
    parts: list[str] = []
    async with aclosing(source):  # type: ignore[type-var]
        item = first
        try:
            while item is not None:
                if isinstance(item, StreamMeta):
                    meta.update(item.metadata)
                else:
                    yield StreamChunk(index=index, content=item)
                    parts.append(item)
                    index += 1
                async with asyncio.timeout_at(deadline):
                    item = await anext(source, None)
        except TimeoutError:
            yield StreamError(code="stream_time_limit", status=504,
                              detail="The stream reached its time limit (STREAM_TIME_LIMIT) and was stopped.")
            return
        except AgentError as exc:
            err = to_app_error(exc)
            yield StreamError(code=err.code, detail=err.detail, status=err.status)
            return
        except Exception:  # agents are user code: a crash mid-stream ends it with an error event
            log.exception("stream.agent_crashed", agent=agent_name)
            yield StreamError(code="agent_error", detail="The agent failed.", status=502)
            return
    await remember("".join(parts))  # only a complete answer joins the conversation
    yield StreamDone(chunks=index, metadata=meta)


def to_app_error(exc: AgentError) -> AppError:
    if isinstance(exc, InvalidAgentInput):
        return ValidationFailed(str(exc), errors=[{"path": exc.path, "message": str(exc)}])
    if isinstance(exc, AgentUnavailable):
        return ServiceUnavailable(str(exc), code="agent_unavailable")
    if isinstance(exc, TransientAgentError):
        retry = str(int(exc.retry_after)) if exc.retry_after else "5"
        return ServiceUnavailable(str(exc), code="agent_temporarily_unavailable", headers={"Retry-After": retry})
    if isinstance(exc, PermanentAgentError):
        return AgentFailed(str(exc))
    return AgentFailed("The agent failed.")
