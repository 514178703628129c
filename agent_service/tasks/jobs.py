"""The arq side of tasks: the agent job functions, and maintenance jobs (declared by each domain)
turned into arq functions and cron jobs. The worker entry point composes these."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

import msgspec
import structlog
from arq import Retry
from arq.cron import CronJob, cron
from arq.worker import Function, func

from agent_service.config import Settings
from agent_service.errors import AppError, ServiceUnavailable
from agent_service.kit import cron as cron_spec
from agent_service.kit import error_reporting
from agent_service.kit.deps import Deps
from agent_service.kit.fast_worker import HANDOFF
from agent_service.kit.maintenance import MaintenanceJob
from agent_service.kit.rounds import Round
from agent_service.logging import get_logger
from agent_service.tasks import lifecycle, maintenance, policy, queue
from agent_service.tasks.policy import RetryLater
from agent_service.tasks.runner import job_name, run_agent_job
from agent_service.tasks.schemas import AgentJob

# deferrals are not tries, and a job parked behind its owner's running cap comes back at least
# every lease by itself: arq's own count must outlast a day of that (arq drops a job a day late)
MAX_DEFERRALS = 100_000
STORE_RETRY_SECONDS = 2.0
log = get_logger("agent_service.tasks")
MAINTENANCE_RESULT_TTL = 24 * 3600  # also stops a late worker re-enqueueing a finished slot


async def _run(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    deps: Deps = ctx["deps"]
    job = msgspec.convert(payload, AgentJob)
    name, lease_s = job_name(job), deps.settings.job_lease_seconds
    owner = job.owner_id
    renew = None if owner is None else functools.partial(policy.slots(deps).renew, owner, job.task_id)
    structlog.contextvars.bind_contextvars(job_id=ctx["job_id"], task_id=job.task_id, request_id=job.request_id)
    worker = deps.stats.worker_id if deps.stats is not None else "?"
    lease: asyncio.Task[None] | None = None
    try:
        # The job's start, in one round trip. First of all, arq's long in-progress mark shortened to
        # the lease, so that it never outlives a worker (or a Redis) dying now: the job runs again
        # within the lease, whatever its time limit. Then the owner's running slot (renewed with
        # the lease, and expiring with it), the run's mark and its counts.
        begin = Round(deps.redis)
        queue.lease_into(begin, ctx["job_id"], lease_s)
        admission = policy.take_slot_into(begin, deps, job, score=int(ctx["score"]))
        claim = lifecycle.claim_run_into(deps, begin, job.task_id, f"{worker}:{ctx['job_id']}:{ctx['job_try']}")
        await begin.send()
        lease = asyncio.create_task(queue.hold_lease(deps.redis, ctx["job_id"], lease_s, renew=renew,
                                                     first_in=lease_s / 3))
        if admission.parked:
            await lifecycle.defer(deps, job.task_id, claim=claim)
            # a parked job's queue entry is already where it must be: no defer, arq leaves it there
            raise Retry(defer=await policy.parked(deps, job, name) or None)
        # however the run ends (done, failed, retrying, cancelled, shut down), its last round gives
        # the slot back (not woken past a rate limit: that limit is what holds jobs back now)
        end = Round(deps.redis)
        try:
            delay = await policy.rate_limited(deps, job, name)
        except BaseException:  # a cancel: the slot and the run's mark back as they were
            policy.release_into(end, deps, job, wake=False)
            lifecycle.unclaim_run_into(deps, end, job.task_id, claim)
            with contextlib.suppress(AppError):
                await end.send()
            raise
        if delay is not None:
            policy.release_into(end, deps, job, wake=False)
            await lifecycle.defer(deps, job.task_id, claim=claim, rnd=end)
            raise Retry(defer=delay)
        policy.release_into(end, deps, job)
        attempt = ctx["job_try"] - claim.deferrals
        if attempt == 1 and deps.metrics is not None:
            await deps.metrics.enqueue_latency(name, time.time() - ctx["enqueue_time"].timestamp())
        handoff = ctx.get(HANDOFF)
        await run_agent_job(deps, job, attempt=attempt, job_id=ctx["job_id"], claim=claim, end=end,
                            handoff=None if handoff is None else functools.partial(handoff, ctx["job_id"]))
    except RetryLater as exc:
        raise Retry(defer=exc.delay) from None
    except ServiceUnavailable:
        # the database or Redis is down: wait it out (not a try of the agent's), never fail the task
        log.warning("job.store_unavailable", task_id=job.task_id, retry_in=STORE_RETRY_SECONDS)
        with contextlib.suppress(AppError):
            await lifecycle.defer(deps, job.task_id)
        raise Retry(defer=STORE_RETRY_SECONDS) from None
    finally:
        if lease is not None:
            lease.cancel()
        structlog.contextvars.unbind_contextvars("job_id", "task_id", "request_id")


async def _reported(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    # arq reports an escaping error after the job's context is gone: the error carries the tags
    with error_reporting.job_tags(task_id=payload.get("task_id"), agent=payload.get("agent_id"),
                                  request_id=payload.get("request_id"), job_id=str(ctx.get("job_id"))):
        await _run(ctx, payload)


async def invoke_agent_async(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    await _reported(ctx, payload)


async def invoke_agent_with_streaming(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    await _reported(ctx, payload)


def agent_functions(settings: Settings) -> list[Function]:
    # Our runner enforces JOB_MAX_RETRIES itself (deferrals by the job limits are not tries),
    # so arq's own cap only guards against endless re-delivery. Results live in the task's own
    # keys: arq keeps none (keep_result=0), so nothing is stored twice.
    tries = settings.job_max_retries + 1 + MAX_DEFERRALS
    return [
        func(invoke_agent_async, name=queue.INVOKE_AGENT, timeout=settings.job_time_limit, keep_result=0,
             max_tries=tries),
        func(invoke_agent_with_streaming, name=queue.INVOKE_AGENT_STREAMING, timeout=settings.stream_job_time_limit,
             keep_result=0, max_tries=tries),
    ]


def _maintenance_function(job: MaintenanceJob, name: str) -> Any:
    async def run(ctx: dict[str, Any], payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        task_id = payload.get("task_id") if isinstance(payload, dict) else None
        # cron job ids are "<name>:<slot ms>"; an on-demand run carries its task id instead
        slot = None if task_id else str(ctx["job_id"]).rpartition(":")[2]
        result = await maintenance.run(ctx["deps"], job, task_id=task_id, slot=slot)
        return None if result is None else {"ran": True}

    run.__qualname__ = run.__name__ = name
    return run


def maintenance_crons(settings: Settings, jobs: tuple[MaintenanceJob, ...]) -> list[CronJob]:
    return [
        cron(_maintenance_function(job, job.function_name(settings.redis_key_prefix)),
             name=job.function_name(settings.redis_key_prefix), unique=True, keep_result=MAINTENANCE_RESULT_TTL,
             timeout=settings.job_time_limit, max_tries=1,
             **cron_spec.parse(job.schedule_setting, getattr(settings, job.schedule_setting)))  # type: ignore[arg-type]
        for job in jobs
    ]
