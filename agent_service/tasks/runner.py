"""The body of the agent jobs: run the agent, report progress, apply the retry policy.

Called by the worker with plain values. Raises RetryLater for a transient failure that has
tries left, JobFailed for a failure that is final; returns the JobResult otherwise.
Every effect is an overwrite keyed by task id, so a re-delivered job never duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, NoReturn

import msgspec

from agent_service.agents.base import (
    AgentError,
    AgentInput,
    AgentUnavailable,
    PermanentAgentError,
    StreamMeta,
    TransientAgentError,
)
from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.ratelimit import Limit
from agent_service.logging import get_logger
from agent_service.sessions.service import SessionService
from agent_service.tasks import queue as names
from agent_service.tasks import repository as task_store
from agent_service.tasks.policy import RetryLater, backoff_delay
from agent_service.tasks.schemas import AgentJob, JobResult

log = get_logger("agent_service.tasks")

STREAM_PROGRESS_EVERY = 10
HARD_LIMIT_MARGIN = 0.1


class JobFailed(Exception):
    """Final failure of a job; the message is the reason stored on the task."""


class SoftTimeLimit(Exception):
    pass


class CancelledByRequest(Exception):
    pass


CANCEL_POLL_SECONDS = 0.25


async def _cancellable(deps: Deps, task_id: str, work: Awaitable[JobResult]) -> JobResult:
    """Run `work`, cancelling it when someone asks for the task to be cancelled.

    Our own mechanism (a per-task Redis key, polled while the job runs) instead of arq's abort:
    it works under the plain `arq` CLI too, needs no `allow_abort_jobs`, and a stale request
    cannot kill a later run because a re-queue clears the key.
    """
    job = asyncio.ensure_future(work)
    requested = False

    async def watch() -> None:
        nonlocal requested
        while not job.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            try:
                if await deps.events.cancel_requested(task_id):
                    requested = True
                    job.cancel()
                    return
            except AppError:
                continue  # Redis blip: keep the job running, look again next time

    watcher = asyncio.create_task(watch())
    try:
        return await job
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if requested and not (current and current.cancelling()):
            raise CancelledByRequest from None
        job.cancel()  # we are being cancelled from outside (hard limit, shutdown): take the work down too
        raise
    finally:
        watcher.cancel()


def _stream_progress(chunks: int) -> int:
    # the total is unknown while streaming: approach 80 without reaching it
    return 40 + int(40 * chunks / (chunks + 50))


async def _state(deps: Deps, task_id: str, state: str, progress: int | None = None, **data: Any) -> None:
    await deps.events.publish(task_id, "state", {"state": state, **data}, progress=progress)


async def _observe(deps: Deps, job: AgentJob, what: str, started: float | None = None) -> None:
    """Per-worker counters (heartbeat) and the shared Prometheus metrics (Redis)."""
    if deps.stats is not None:
        deps.stats.bump(what)
    if deps.metrics is not None:
        duration = None if started is None else time.monotonic() - started
        await deps.metrics.event(what, names.INVOKE_AGENT_STREAMING if job.stream else names.INVOKE_AGENT,
                                 duration=duration)


async def run_agent_job(deps: Deps, job: AgentJob, *, attempt: int, job_id: str) -> dict[str, Any] | None:
    if deps.stats is not None:
        deps.stats.running += 1
    try:
        return await _run_job(deps, job, attempt=attempt, job_id=job_id)
    finally:
        if deps.stats is not None:
            deps.stats.running -= 1


async def _run_job(deps: Deps, job: AgentJob, *, attempt: int, job_id: str) -> dict[str, Any] | None:
    started = time.monotonic()
    fields = {"job_id": job_id, "task_id": job.task_id, "agent": job.agent_id, "try": attempt}
    if await deps.events.cancel_requested(job.task_id):
        await _finish_cancelled(deps, job, None, fields, started)
        return None
    if not await task_store.mark_started(deps.db, job.task_id, tries=attempt, now=deps.clock()):
        log.info("job.skipped", reason="task already finished or unknown", **fields)
        return None
    log.info("job.started", stream=job.stream, **fields)
    await _observe(deps, job, "started")
    await _state(deps, job.task_id, "STARTED", progress=0, attempt=attempt)
    soft = deps.settings.stream_job_soft_time_limit if job.stream else deps.settings.job_soft_time_limit
    hard = deps.settings.stream_job_time_limit if job.stream else deps.settings.job_time_limit
    try:
        result = await _cancellable(deps, job.task_id, _run(deps, job, attempt=attempt, soft_limit=soft))
    except CancelledByRequest:
        partial = await _partial(deps, job)
        kept: dict[str, Any] | None = msgspec.to_builtins(partial) if partial else None
        if kept is not None:
            await deps.events.store_result(job.task_id, kept)
        await _finish_cancelled(deps, job, partial, fields, started)
        return kept
    except TransientAgentError as exc:
        await _retry_or_fail(deps, job, attempt, str(exc), exc.retry_after, fields, started)
    except (PermanentAgentError, AgentUnavailable) as exc:
        await _fail(deps, job, str(exc), fields, started)
    except SoftTimeLimit:
        await _fail(deps, job, f"Soft time limit of {soft:g}s exceeded.", fields, started)
    except AgentError as exc:
        await _fail(deps, job, str(exc) or "The agent failed.", fields, started)
    except asyncio.CancelledError:
        # arq's timer started a moment before ours, so reaching `hard` here (less a margin for the
        # scheduling delay) means arq's hard limit fired; anything earlier is a shutdown or an abort
        if time.monotonic() - started >= hard - HARD_LIMIT_MARGIN:
            await _fail(deps, job, f"Hard time limit of {hard:g}s exceeded; the job was stopped.", fields, started)
        raise
    except Exception:
        log.exception("job.crashed", **fields)
        await _fail(deps, job, "The agent crashed (internal error).", fields, started)
    if job.session_id and not result.incomplete:
        await SessionService.from_deps(deps).record_exchange(job.owner_id, job.session_id, job.agent_id,
                                                             job.message, result.content)
    payload: dict[str, Any] = msgspec.to_builtins(result)
    await deps.events.store_result(job.task_id, payload)
    now = deps.clock()
    await task_store.mark_finished(deps.db, job.task_id, state="SUCCESS", error=None, now=now)
    await _state(deps, job.task_id, "SUCCESS", progress=100)
    await _observe(deps, job, "succeeded", started)
    log.info("job.succeeded", duration=round(time.monotonic() - started, 4), incomplete=result.incomplete, **fields)
    return payload


async def _run(deps: Deps, job: AgentJob, *, attempt: int, soft_limit: float) -> JobResult:
    agent = deps.agents.get(job.agent_id)
    if agent is None:
        raise PermanentAgentError(f"No agent named {job.agent_id!r}.")
    await deps.events.progress(job.task_id, 20)
    history = []
    if job.session_id:
        history = await SessionService.from_deps(deps).history_for(job.owner_id, job.session_id, agent.name)
    data = AgentInput(message=job.message, session_id=job.session_id, metadata=job.metadata, attempt=attempt,
                      history=history)
    await deps.events.progress(job.task_id, 40)
    started_at = deps.clock()
    meta: dict[str, Any] = {"agent_id": agent.name}
    if not job.stream:
        try:
            async with asyncio.timeout(soft_limit):
                out = await agent.invoke(data)
        except TimeoutError:
            raise SoftTimeLimit from None
        await deps.events.progress(job.task_id, 80)
        return JobResult(
            content=out.content, metadata={**meta, **out.metadata}, agent_id=agent.name,
            session_id=job.session_id, started_at=started_at, completed_at=deps.clock(),
        )
    chunks: list[str] = []
    incomplete = False
    await deps.events.reset_chunks(job.task_id)
    try:
        async with asyncio.timeout(soft_limit):
            async for item in agent.stream(data):
                if isinstance(item, StreamMeta):
                    meta.update(item.metadata)
                    continue
                await deps.events.chunk(job.task_id, len(chunks), item)
                chunks.append(item)
                if len(chunks) % STREAM_PROGRESS_EVERY == 0:
                    await deps.events.progress(job.task_id, _stream_progress(len(chunks)))
    except TimeoutError:
        incomplete = True  # soft limit: stop cleanly and keep what we have
        meta["incomplete_reason"] = f"soft time limit of {soft_limit:g}s reached"
    await deps.events.progress(job.task_id, 80)
    return JobResult(
        content="".join(chunks), metadata=meta, agent_id=agent.name, session_id=job.session_id,
        started_at=started_at, completed_at=deps.clock(), chunks=chunks, incomplete=incomplete,
    )


async def _partial(deps: Deps, job: AgentJob) -> JobResult | None:
    """What a cancelled streaming job had produced: kept, marked incomplete."""
    if not job.stream:
        return None
    chunks = await deps.events.get_chunks(job.task_id)
    now = deps.clock()
    return JobResult(content="".join(chunks), metadata={"agent_id": job.agent_id, "incomplete_reason": "cancelled"},
                     agent_id=job.agent_id, session_id=job.session_id, started_at=now, completed_at=now,
                     chunks=chunks, incomplete=True)


async def _finish_cancelled(
    deps: Deps, job: AgentJob, partial: JobResult | None, fields: dict[str, Any], started: float
) -> None:
    await task_store.mark_finished(deps.db, job.task_id, state="REVOKED", error="Cancelled by request.",
                                   now=deps.clock())
    await _state(deps, job.task_id, "REVOKED", error="Cancelled by request.")
    await _observe(deps, job, "cancelled", started)
    log.info("job.cancelled", kept_chunks=len(partial.chunks or []) if partial else 0,
             duration=round(time.monotonic() - started, 4), **fields)


async def _fail(deps: Deps, job: AgentJob, reason: str, fields: dict[str, Any], started: float) -> NoReturn:
    await task_store.mark_finished(deps.db, job.task_id, state="FAILURE", error=reason, now=deps.clock())
    await _state(deps, job.task_id, "FAILURE", error=reason)
    await _observe(deps, job, "failed", started)
    log.warning("job.failed", error=reason, duration=round(time.monotonic() - started, 4), **fields)
    raise JobFailed(reason)


async def _retry_or_fail(
    deps: Deps, job: AgentJob, attempt: int, reason: str, retry_after: float | None,
    fields: dict[str, Any], started: float,
) -> NoReturn:
    settings = deps.settings
    if attempt > settings.job_max_retries:
        await _fail(deps, job, f"Gave up after {attempt} attempts: {reason}", fields, started)
    delay = backoff_delay(attempt, base=settings.job_retry_backoff_base, cap=settings.job_retry_backoff_max,
                          rng=deps.rng)
    if retry_after:
        delay = min(max(delay, retry_after), settings.job_retry_backoff_max)
    now = deps.clock()
    retry_at = now + timedelta(seconds=delay)
    await task_store.mark_retry(deps.db, job.task_id, error=reason, retry_at=retry_at, now=now)
    await _state(deps, job.task_id, "RETRY", error=reason, retry_at=retry_at.isoformat())
    await _observe(deps, job, "retried")
    log.info("job.retrying", error=reason, delay=round(delay, 3), duration=round(time.monotonic() - started, 4),
             **fields)
    raise RetryLater(delay, reason)


async def admit(deps: Deps, job: AgentJob) -> float | None:
    """Job rate limits shared by all workers: None to run now, else seconds to defer the job.

    A deferral is not a try: the caller re-queues the job and the attempt count ignores it.
    """
    s = deps.settings
    if not s.rate_limit_enabled or deps.limiter is None:
        return None
    name = names.INVOKE_AGENT_STREAMING if job.stream else names.INVOKE_AGENT
    own = Limit(s.job_rate_limit_stream if job.stream else s.job_rate_limit_invoke)
    try:
        decision = await deps.limiter.hit([(f"job:{name}", own), ("job:all", Limit(s.job_rate_limit_all))])
    except AppError:
        log.warning("ratelimit.unavailable", failing="open", job=name)
        return None
    if decision.allowed:
        return None
    await _observe(deps, job, "deferred")
    if deps.metrics is not None:
        await deps.metrics.rate_limited(f"job:{name}")
    log.info("job.deferred", task_id=job.task_id, delay=decision.retry_after, job=name)
    return max(decision.retry_after, 0.05)
