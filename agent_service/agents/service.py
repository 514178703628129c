"""Invoke an agent: synchronously, as a stream of chunks, or as a queued background task."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any

import msgspec

from agent_service.agents.base import (
    Agent,
    AgentError,
    AgentInput,
    AgentUnavailable,
    ChatMessage,
    InvalidAgentInput,
    PermanentAgentError,
    StreamMeta,
    TransientAgentError,
    validate_input,
)
from agent_service.agents.schemas import (
    MAX_SCHEDULE_SECONDS,
    AgentInfo,
    AgentList,
    InvokeAsyncRequest,
    InvokeRequest,
    InvokeResponse,
)
from agent_service.errors import AgentFailed, AppError, GatewayTimeout, NotFound, ServiceUnavailable, ValidationFailed
from agent_service.kit import serializer
from agent_service.kit.deps import Deps
from agent_service.kit.idempotency import IdempotencyStore, fingerprint
from agent_service.logging import get_logger
from agent_service.sessions.service import SessionService
from agent_service.tasks import queue as names
from agent_service.tasks import queue as priority
from agent_service.tasks import repository as task_store
from agent_service.tasks.schemas import AgentJob, TaskAccepted

log = get_logger(__name__)


class StreamEvent(msgspec.Struct, kw_only=True):
    event: str  # chunk | done | error
    data: dict[str, Any]


def list_agents(deps: Deps) -> AgentList:
    return AgentList(
        agents=[
            AgentInfo(id=a.name, description=a.description, available=a.available, streaming=True)
            for a in deps.agents.all()
        ],
        default_agent=deps.settings.default_agent,
    )


def resolve_agent(deps: Deps, agent_id: str | None) -> Agent:
    name = agent_id or deps.settings.default_agent
    agent = deps.agents.get(name)
    if agent is None:
        raise NotFound(f"No agent named {name!r}.", code="agent_not_found")
    if not agent.available:
        raise ServiceUnavailable(f"Agent {name!r} is not configured on this server.", code="agent_unavailable")
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
    try:
        async with asyncio.timeout(deps.settings.sync_invoke_timeout):
            out = await agent.invoke(data)
    except TimeoutError:
        raise GatewayTimeout("The agent did not answer in time; use invoke-async for long work.") from None
    except AgentError as exc:
        raise to_app_error(exc) from None
    await _remember(deps, agent, req, owner_id, out.content)
    return InvokeResponse(response=out.content, metadata={**out.metadata, "agent_id": agent.name})


async def open_stream(
    deps: Deps, agent_id: str | None, req: InvokeRequest, *, owner_id: str
) -> AsyncIterator[StreamEvent]:
    """Start the agent's stream and wait for its first item, so that bad input or an unavailable
    agent is still an ordinary HTTP error; afterwards failures become an `error` event."""
    agent = resolve_agent(deps, agent_id)
    source = agent.stream(await _input(deps, agent, req, owner_id))
    try:
        first = await anext(source, None)
    except AgentError as exc:
        await source.aclose()  # type: ignore[attr-defined]
        raise to_app_error(exc) from None
    return _events(agent.name, source, first, remember=lambda text: _remember(deps, agent, req, owner_id, text))


async def _events(
    agent_name: str, source: AsyncIterator[Any], first: Any, *, remember: Callable[[str], Awaitable[None]]
) -> AsyncIterator[StreamEvent]:
    index = 0
    parts: list[str] = []
    meta: dict[str, Any] = {"agent_id": agent_name}
    async with aclosing(source):  # type: ignore[type-var]
        item = first
        try:
            while item is not None:
                if isinstance(item, StreamMeta):
                    meta.update(item.metadata)
                else:
                    yield StreamEvent(event="chunk", data={"index": index, "content": item})
                    parts.append(item)
                    index += 1
                item = await anext(source, None)
        except AgentError as exc:
            err = to_app_error(exc)
            yield StreamEvent(event="error", data={"code": err.code, "detail": err.detail, "status": err.status})
            return
        except Exception:
            log.exception("stream.agent_crashed", agent=agent_name)
            yield StreamEvent(event="error", data={"code": "agent_error", "detail": "The agent failed.", "status": 502})
            return
    await remember("".join(parts))  # only a complete answer joins the conversation
    yield StreamEvent(event="done", data={"chunks": index, "metadata": meta})


def status_url(deps: Deps, task_id: str) -> str:
    path = f"/api/v1/agents/tasks/{task_id}"
    base = deps.settings.public_base_url
    return f"{base.rstrip('/')}{path}" if base else path


def _when(deps: Deps, req: InvokeAsyncRequest) -> datetime | None:
    """The time a scheduled request should run at; None for 'as soon as possible'."""
    if req.run_at is not None and req.delay_seconds is not None:
        raise ValidationFailed("Give either run_at or delay_seconds, not both.",
                               errors=[{"path": "$.delay_seconds", "message": "Not allowed together with run_at"}])
    now = deps.clock()
    if req.delay_seconds:
        return now + timedelta(seconds=req.delay_seconds)
    if req.run_at is None:
        return None
    if req.run_at.tzinfo is None:
        raise ValidationFailed("run_at needs a time zone offset (RFC 3339).",
                               errors=[{"path": "$.run_at", "message": "Expected an offset such as Z or +02:00"}])
    if req.run_at - now > timedelta(seconds=MAX_SCHEDULE_SECONDS):
        raise ValidationFailed("run_at is more than 7 days ahead.",
                               errors=[{"path": "$.run_at", "message": "At most 7 days ahead"}])
    return req.run_at if req.run_at > now else None


async def enqueue(
    deps: Deps, agent_id: str, req: InvokeAsyncRequest, *, owner_id: str, request_id: str | None,
    idempotency_key: str | None = None,
) -> tuple[TaskAccepted, bool]:
    """Queue the invocation; returns (answer, replayed) — replayed for a repeated Idempotency-Key."""
    agent = resolve_agent(deps, agent_id)  # a doomed job is never queued
    run_at = _when(deps, req)
    try:  # a job that is sure to fail on its input is never queued
        validate_input(agent, AgentInput(message=req.message, metadata=dict(req.metadata or {})))
    except AgentError as exc:
        raise to_app_error(exc) from None
    if req.session_id:
        await SessionService.from_deps(deps).check_usable(owner_id, req.session_id)
    if idempotency_key is None:
        return await _enqueue(deps, agent, req, run_at, owner_id=owner_id, request_id=request_id), False
    store = IdempotencyStore(deps.redis)
    fp = fingerprint(agent.name, msgspec.json.encode(req))
    stored = await store.begin(owner_id, idempotency_key, fp)
    if stored is not None:
        return msgspec.convert(stored.body, TaskAccepted), True
    try:
        accepted = await _enqueue(deps, agent, req, run_at, owner_id=owner_id, request_id=request_id)
    except BaseException:
        await store.abandon(owner_id, idempotency_key)
        raise
    await store.complete(owner_id, idempotency_key, fp, 202, msgspec.to_builtins(accepted))
    return accepted, False


async def _enqueue(
    deps: Deps, agent: Agent, req: InvokeAsyncRequest, run_at: datetime | None, *, owner_id: str,
    request_id: str | None,
) -> TaskAccepted:
    task_id = uuid.uuid4().hex
    kind = names.KIND_STREAM if req.stream else names.KIND_INVOKE
    payload = AgentJob(
        task_id=task_id, agent_id=agent.name, message=req.message, session_id=req.session_id,
        metadata=dict(req.metadata or {}), owner_id=owner_id, request_id=request_id, stream=req.stream,
    )
    if not serializer.storable(msgspec.to_builtins(payload)):
        raise ValidationFailed("metadata holds values a job cannot carry (integers beyond 64 bits).",
                               errors=[{"path": "$.metadata", "message": "Integers must fit in 64 bits"}])
    await task_store.create(
        deps.db, task_id=task_id, kind=kind, agent_id=agent.name, owner_id=owner_id,
        request_id=request_id, session_id=req.session_id, now=deps.clock(),
        payload=msgspec.json.encode(payload).decode(), scheduled_for=run_at, priority=req.priority,
    )
    defer_until, defer_by = priority.schedule(req.priority, run_at)
    try:
        await deps.queue.enqueue(names.JOB_FOR_KIND[kind], payload, job_id=task_id, defer_until=defer_until,
                                 defer_by=defer_by)
    except ServiceUnavailable:
        await task_store.delete(deps.db, task_id)  # the client was told 503: leave no phantom task
        raise
    await deps.events.publish(task_id, "state", {"state": "PENDING"}, progress=0)
    log.info("task.queued", task_id=task_id, agent=agent.name, kind=kind)
    return TaskAccepted(
        task_id=task_id, status="queued", message=f"Task queued for agent {agent.name!r}.",
        status_url=status_url(deps, task_id), priority=req.priority, scheduled_for=run_at,
    )


def to_app_error(exc: AgentError) -> AppError:
    if isinstance(exc, InvalidAgentInput):
        return ValidationFailed(str(exc), errors=[{"path": "$.metadata", "message": str(exc)}])
    if isinstance(exc, AgentUnavailable):
        return ServiceUnavailable(str(exc), code="agent_unavailable")
    if isinstance(exc, TransientAgentError):
        retry = str(int(exc.retry_after)) if exc.retry_after else "5"
        return ServiceUnavailable(str(exc), code="agent_temporarily_unavailable", headers={"Retry-After": retry})
    if isinstance(exc, PermanentAgentError):
        return AgentFailed(str(exc))
    return AgentFailed("The agent failed.")
