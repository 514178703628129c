"""The body of the agent jobs: run the agent, report progress, apply the retry policy.

Called by the worker (tasks/jobs.py) with plain values; every change of the task goes through
tasks/lifecycle.py. Raises RetryLater for a transient failure that has tries left, JobFailed for
a failure that is final, and returns nothing otherwise (the result lives in the task's Redis
keys, not in arq's). Every effect is an overwrite keyed by task id, so a re-delivered job never
duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, NoReturn

from agent_service.agents.schemas import (
    AgentError,
    AgentInput,
    AgentUnavailable,
    PermanentAgentError,
    StreamMeta,
    TransientAgentError,
)
from agent_service.agents.service import registry
from agent_service.errors import AppError, ServiceUnavailable
from agent_service.kit import tracing
from agent_service.kit.deps import Deps
from agent_service.kit.rounds import Round
from agent_service.logging import get_logger
from agent_service.sessions.service import SessionService
from agent_service.tasks import lifecycle, queue
from agent_service.tasks import repository as task_store
from agent_service.tasks.cancel_watch import CancelledByRequest, cancellable
from agent_service.tasks.lifecycle import ANSWERED, CALLED, LOADED, Run
from agent_service.tasks.live import RunClaim
from agent_service.tasks.policy import RetryLater, backoff_delay
from agent_service.tasks.schemas import AgentJob, JobResult
from agent_service.usage import service as usage

log = get_logger("agent_service.tasks")

HARD_LIMIT_MARGIN = 0.1
RELEASE_EVERY_SECONDS, RELEASE_TRIES = 0.5, 600  # retry a failed release for up to 5 minutes


class JobFailed(Exception):
    """Final failure of a job; the message is the reason stored on the task."""


class SoftTimeLimit(Exception):
    pass


_pending_releases: set[asyncio.Task[None]] = set()


async def _release_later(deps: Deps, task_id: str) -> None:
    try:
        for _ in range(RELEASE_TRIES):
            await asyncio.sleep(RELEASE_EVERY_SECONDS)
            with contextlib.suppress(AppError):
                await lifecycle.release_run(deps, task_id)
                return
    finally:
        _pending_releases.discard(asyncio.current_task())  # type: ignore[arg-type]


def job_name(job: AgentJob) -> str:
    return queue.INVOKE_AGENT_STREAMING if job.stream else queue.INVOKE_AGENT


async def observe(deps: Deps, job: AgentJob, what: str, started: float | None = None) -> None:
    """Per-worker counters (heartbeat) and the shared Prometheus metrics (Redis)."""
    if deps.stats is not None:
        deps.stats.bump(what)
    if deps.metrics is not None:
        duration = None if started is None else time.monotonic() - started
        await deps.metrics.event(what, job_name(job), duration=duration)


async def run_agent_job(deps: Deps, job: AgentJob, *, attempt: int, job_id: str, claim: RunClaim,
                        end: Round, handoff: Callable[[Awaitable[None]], None] | None = None) -> None:
    """Run the job whose start (tasks/jobs.py) took `claim` (the run's mark, its counts, the cancel
    flag); `end` is the run's last round, sent however the run ends, with the writes the caller
    added to it (the owner's slot given back). With `handoff` (FastWorker's), that last send is
    handed to the worker, which waits for it together with its own end of the job."""
    if deps.stats is not None:
        deps.stats.running += 1
    run = Run(deps, job.task_id, attempt)
    try:
        with tracing.job_span(f"run {job_name(job)}", job.traceparent, task_id=job.task_id, agent=job.agent_id,
                              job_id=job_id, attempt=attempt, request_id=job.request_id):
            await _run_job(deps, job, run, job_id=job_id, claim=claim, end=end)
    finally:
        if deps.stats is not None:
            deps.stats.running -= 1
        # every way out this worker sees (incl. a shutdown's cancel) lets go of the run; only a
        # dead worker leaves it behind, which the next run counts as a lost worker
        await run.end_into(end)
        lifecycle.release_run_into(deps, end, job.task_id)
        last = _send_end(deps, job.task_id, end)
        if handoff is None:
            await last
        else:
            handoff(asyncio.ensure_future(last))


async def _send_end(deps: Deps, task_id: str, end: Round) -> None:
    try:
        await end.send()
    except AppError:  # Redis is away: let go of the run as soon as it is back (this worker is alive)
        _pending_releases.add(asyncio.create_task(_release_later(deps, task_id)))


async def _run_job(deps: Deps, job: AgentJob, run: Run, *, job_id: str, claim: RunClaim, end: Round) -> None:
    started = time.monotonic()
    attempt, worker_lost = run.attempt, claim.worker_lost
    fields = {"job_id": job_id, "task_id": job.task_id, "agent": job.agent_id, "try": attempt}
    if claim.cancel_requested:
        await _finish_cancelled(deps, job, run, None, fields, started)
        return
    if worker_lost:
        log.warning("job.worker_lost", **fields)
    counts = await lifecycle.start(deps, job.task_id, attempt=attempt, worker_lost=worker_lost, run=run)
    if counts is None:
        if await task_store.get(deps.db, job.task_id) is None:
            # a queue entry without its durable record: another deployment's database, or a record
            # lost with a SQL restore; never silent
            log.warning("job.task_not_found", **fields)
            await observe(deps, job, "orphaned")
        else:
            log.info("job.skipped", reason="task already finished", **fields)
        return
    if counts.worker_losses >= deps.settings.job_max_worker_losses:
        # a poison job (it takes its worker down) must not crash workers forever
        await _fail(deps, job, run, f"The job lost its worker {counts.worker_losses} times.", fields, started,
                    code="worker_lost")
    run.retries = counts.retries
    log.info("job.started", stream=job.stream, **fields)
    await observe(deps, job, "started")
    soft = deps.settings.stream_job_soft_time_limit if job.stream else deps.settings.job_soft_time_limit
    hard = deps.settings.stream_job_time_limit if job.stream else deps.settings.job_time_limit
    try:
        result = await cancellable(deps, job.task_id, _run(deps, job, run, soft_limit=soft))
    except CancelledByRequest:
        await _finish_cancelled(deps, job, run, await _partial(deps, job), fields, started)
        return
    except TransientAgentError as exc:
        await _retry_or_fail(deps, job, run, str(exc), exc.retry_after, fields, started)
    except (PermanentAgentError, AgentUnavailable) as exc:
        await _fail(deps, job, run, str(exc), fields, started)
    except SoftTimeLimit:
        await _fail(deps, job, run, f"Soft time limit of {soft:g}s exceeded.", fields, started)
    except AgentError as exc:
        await _fail(deps, job, run, str(exc) or "The agent failed.", fields, started)
    except asyncio.CancelledError:
        # arq's timer started a moment before ours, so reaching `hard` here (less a margin for the
        # scheduling delay) means arq's hard limit fired; anything earlier is a worker shutting down
        # past its drain, and arq puts the job back in the queue: no try used, nothing to record
        if time.monotonic() - started >= hard - HARD_LIMIT_MARGIN:
            await _fail(deps, job, run, f"Hard time limit of {hard:g}s exceeded; the job was stopped.", fields,
                        started, code="hard_time_limit")
        log.info("job.requeued_on_shutdown", **fields)
        raise
    except ServiceUnavailable:
        raise  # a store outage, not the agent's fault: the worker re-queues the job
    except Exception:  # agents are user code: any crash ends the task FAILURE, never the worker
        log.exception("job.crashed", **fields)
        await _fail(deps, job, run, "The agent crashed (internal error).", fields, started)
    if job.session_id and not result.incomplete:
        await SessionService.from_deps(deps).record_exchange(job.owner_id, job.session_id, job.agent_id,
                                                             job.message, result.content)
    await run.succeed(result, then=end)
    await usage.settle_task(deps, job, result.metadata)  # its usage recorded, its budget hold settled
    await observe(deps, job, "succeeded", started)
    log.info("job.succeeded", duration=round(time.monotonic() - started, 4), incomplete=result.incomplete, **fields)


async def _run(deps: Deps, job: AgentJob, run: Run, *, soft_limit: float) -> JobResult:
    agent = registry(deps).get(job.agent_id)
    if agent is None:
        raise PermanentAgentError(f"No agent named {job.agent_id!r}.")
    history = []
    if job.session_id:
        history = await SessionService.from_deps(deps).history_for(job.owner_id, job.session_id, agent.name)
    run.note(LOADED)
    data = AgentInput(message=job.message, session_id=job.session_id, metadata=job.metadata, attempt=run.attempt,
                      history=history)
    run.note(CALLED)
    run.flush_soon()  # STARTED, LOADED and CALLED in one round trip, while the agent takes its time
    started_at = deps.clock()
    meta: dict[str, Any] = {"agent_id": agent.name}
    if not job.stream:
        try:
            async with asyncio.timeout(soft_limit):
                out = await agent.invoke(data)
        except TimeoutError:
            raise SoftTimeLimit from None
        run.note(ANSWERED)  # goes out with the result
        return JobResult(content=out.content, metadata={**meta, **out.metadata}, agent_id=agent.name,
                         session_id=job.session_id, started_at=started_at, completed_at=deps.clock())
    parts: list[str] = []
    incomplete = False
    try:
        async with asyncio.timeout(soft_limit):
            async for item in agent.stream(data):
                if isinstance(item, StreamMeta):
                    meta.update(item.metadata)
                    run.expected = item.expected_chunks or run.expected
                    continue
                await run.chunk(item)
                parts.append(item)
    except TimeoutError:
        incomplete = True  # soft limit: stop cleanly and keep what we have
        meta["incomplete_reason"] = f"soft time limit of {soft_limit:g}s reached"
    return JobResult(content="".join(parts), metadata=meta, agent_id=agent.name, session_id=job.session_id,
                     started_at=started_at, completed_at=deps.clock(), incomplete=incomplete)


async def _partial(deps: Deps, job: AgentJob) -> JobResult | None:
    """What a cancelled streaming job had produced: kept, marked incomplete."""
    if not job.stream:
        return None
    chunks = await lifecycle.live(deps).chunks(job.task_id)
    now = deps.clock()
    return JobResult(content="".join(chunks), metadata={"agent_id": job.agent_id, "incomplete_reason": "cancelled"},
                     agent_id=job.agent_id, session_id=job.session_id, started_at=now, completed_at=now,
                     incomplete=True)


async def _finish_cancelled(deps: Deps, job: AgentJob, run: Run, partial: JobResult | None, fields: dict[str, Any],
                            started: float) -> None:
    await run.revoke(partial)
    await usage.release(deps, job.owner_id, [job.task_id])
    await observe(deps, job, "cancelled", started)
    log.info("job.cancelled", kept_chars=len(partial.content) if partial else 0,
             duration=round(time.monotonic() - started, 4), **fields)


async def _fail(deps: Deps, job: AgentJob, run: Run, reason: str, fields: dict[str, Any], started: float,
                *, code: str | None = None) -> NoReturn:
    await run.fail(reason, code=code)
    await usage.release(deps, job.owner_id, [job.task_id])
    await observe(deps, job, "failed", started)
    log.warning("job.failed", error=reason, duration=round(time.monotonic() - started, 4), **fields)
    raise JobFailed(reason)


async def _retry_or_fail(
    deps: Deps, job: AgentJob, run: Run, reason: str, retry_after: float | None,
    fields: dict[str, Any], started: float,
) -> NoReturn:
    settings = deps.settings
    if run.retries >= settings.job_max_retries:
        await _fail(deps, job, run, f"Gave up after {run.retries + 1} attempts: {reason}", fields, started,
                    code="retries_exhausted")
    delay = backoff_delay(run.attempt, base=settings.job_retry_backoff_base, cap=settings.job_retry_backoff_max,
                          rng=deps.rng)
    if retry_after:
        delay = min(max(delay, retry_after), settings.job_retry_backoff_max)
    retry_at = deps.clock() + timedelta(seconds=delay)
    await run.retry(reason, retry_at)
    await observe(deps, job, "retried")
    log.info("job.retrying", error=reason, delay=round(delay, 3), duration=round(time.monotonic() - started, 4),
             **fields)
    raise RetryLater(delay, reason)
