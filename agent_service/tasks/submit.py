"""Queue an agent invocation as a background task (invoke-async): refuse a doomed job before
anything is queued, honour scheduling and priority, and make retried submissions idempotent."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

import msgspec

from agent_service.agents.schemas import (
    MAX_SCHEDULE_SECONDS,
    Agent,
    AgentError,
    AgentInput,
    InvokeAsyncRequest,
    StoredTaskWebhook,
    validate_input,
)
from agent_service.agents.service import resolve_agent, to_app_error
from agent_service.errors import ValidationFailed
from agent_service.kit import ids, serializer, ssrf, tracing
from agent_service.kit.deps import Deps
from agent_service.kit.idempotency import IdempotencyStore, fingerprint
from agent_service.logging import get_logger
from agent_service.sessions.service import SessionService
from agent_service.tasks import lifecycle, policy, queue
from agent_service.tasks.schemas import AgentJob, TaskAccepted
from agent_service.usage import service as usage

log = get_logger(__name__)
DEFAULT_WEBHOOK_EVENTS = ("task.succeeded", "task.failed", "task.cancelled")


def status_url(deps: Deps, task_id: str) -> str:
    path = f"/api/v1/agents/tasks/{task_id}/status"
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
    idempotency_key: str | None = None, tier: str | None = None, is_admin: bool = False,
    api_key_id: str | None = None,
) -> tuple[TaskAccepted, bool]:
    """Queue the invocation; returns (answer, replayed) — replayed for a repeated Idempotency-Key.
    `tier` (the caller's; the default tier when None) sets the owner's cap on running jobs."""
    tier = policy.job_tier(tier, is_admin=is_admin, default=deps.settings.default_tier)
    agent = resolve_agent(deps, agent_id)  # a doomed job is never queued
    run_at = await check(deps, agent, req, owner_id=owner_id)
    if idempotency_key is None:
        return await _enqueue(deps, agent, req, run_at, owner_id=owner_id, request_id=request_id, tier=tier,
                              api_key_id=api_key_id), False
    store = IdempotencyStore(deps.redis, prefix=deps.prefix)
    fp = fingerprint(agent.name, msgspec.json.encode(req))

    async def go() -> TaskAccepted:
        return await _enqueue(deps, agent, req, run_at, owner_id=owner_id, request_id=request_id, tier=tier,
                              api_key_id=api_key_id)

    return await store.once(owner_id, idempotency_key, fp, go, answer=TaskAccepted)


async def check(deps: Deps, agent: Agent, req: InvokeAsyncRequest, *, owner_id: str) -> datetime | None:
    """Refuse a request whose job is sure to fail, before anything is queued; the time to run it at."""
    run_at = _when(deps, req)
    try:  # a job that is sure to fail on its input is never queued
        validate_input(agent, AgentInput(message=req.message, metadata=dict(req.metadata or {})))
    except AgentError as exc:
        raise to_app_error(exc) from None
    if req.session_id:
        await SessionService.from_deps(deps).check_usable(owner_id, req.session_id)
    if req.webhook is not None:  # refused now (422), and checked again at every delivery
        await ssrf.validate(deps, req.webhook.url, path="$.webhook.url")
    return run_at


@tracing.traced("enqueue agent job", kind="producer")
async def _enqueue(
    deps: Deps, agent: Agent, req: InvokeAsyncRequest, run_at: datetime | None, *, owner_id: str,
    request_id: str | None, tier: str, api_key_id: str | None = None,
) -> TaskAccepted:
    sub, accepted = build(deps, agent, req, run_at, owner_id=owner_id, request_id=request_id, tier=tier,
                          api_key_id=api_key_id)
    async with usage.holding(deps, owner_id, [sub.task_id], run_at=run_at):  # 429 before anything is queued
        await lifecycle.submit(deps, sub)
    log.debug("task.queued", task_id=sub.task_id, agent=agent.name, kind=sub.kind)
    return accepted


def build(
    deps: Deps, agent: Agent, req: InvokeAsyncRequest, run_at: datetime | None, *, owner_id: str,
    request_id: str | None, tier: str, api_key_id: str | None = None,
) -> tuple[lifecycle.Submission, TaskAccepted]:
    """The task of a checked request (its record and job, not written yet) and the answer to give."""
    task_id = ids.time_ordered()
    kind = queue.KIND_STREAM if req.stream else queue.KIND_INVOKE
    tracing.annotate(task_id=task_id, agent=agent.name, kind=kind)
    payload = AgentJob(
        task_id=task_id, agent_id=agent.name, message=req.message, session_id=req.session_id,
        metadata=dict(req.metadata or {}), owner_id=owner_id, request_id=request_id, stream=req.stream,
        tier=tier, traceparent=tracing.traceparent(), api_key_id=api_key_id,
    )
    job = msgspec.to_builtins(payload)
    if not serializer.storable(job):
        raise ValidationFailed("metadata holds values a job cannot carry (integers beyond 64 bits).",
                               errors=[{"path": "$.metadata", "message": "Integers must fit in 64 bits"}])
    defer_until, defer_by = queue.schedule(req.priority, run_at)
    webhook = None
    if req.webhook is not None:  # its signing secret, in the Standard Webhooks format, is shown once: below
        webhook = StoredTaskWebhook(url=req.webhook.url, events=list(req.webhook.events or DEFAULT_WEBHOOK_EVENTS),
                                    secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
    sub = lifecycle.Submission(
        task_id=task_id, kind=kind, function=queue.JOB_FOR_KIND[kind], payload=job, agent_id=agent.name,
        owner_id=owner_id, request_id=request_id, session_id=req.session_id, keep_payload=True,
        scheduled_for=run_at, priority=req.priority, defer_until=defer_until, defer_by=defer_by,
        webhook=msgspec.json.encode(webhook).decode() if webhook else None,
    )
    return sub, TaskAccepted(
        task_id=task_id, status="queued", message=f"Task queued for agent {agent.name!r}.",
        status_url=status_url(deps, task_id), priority=req.priority, scheduled_for=run_at,
        webhook_secret=webhook.secret if webhook else None,
    )
