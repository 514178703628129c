"""Builds arq WorkerSettings for a Settings: the job functions, hooks and msgpack serializer.

An entry-point module (like app.py): it may import anything, and only entry points import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import structlog
from arq import Retry
from arq.cron import CronJob, cron
from arq.worker import func

from agent_service.config import Settings
from agent_service.errors import AppError
from agent_service.kit import cron as cron_spec
from agent_service.kit import serializer
from agent_service.kit.deps import Deps, open_deps
from agent_service.logging import configure_logging, get_logger
from agent_service.ops.workers import WorkerBoard, WorkerStats
from agent_service.tasks import maintenance as maintenance_runner
from agent_service.tasks import queue as names
from agent_service.tasks.policy import RetryLater
from agent_service.tasks.queue import redis_settings
from agent_service.tasks.runner import admit, run_agent_job
from agent_service.tasks.schemas import AgentJob

log = get_logger(__name__)
MAX_DEFERRALS = 1000
MAINTENANCE_RESULT_TTL = 24 * 3600  # also stops a late worker re-enqueueing a finished slot


async def _run(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any] | None:
    deps: Deps = ctx["deps"]
    job = msgspec.convert(payload, AgentJob)
    structlog.contextvars.bind_contextvars(job_id=ctx["job_id"], task_id=job.task_id, request_id=job.request_id)
    deferrals_key = f"agent:task:{job.task_id}:deferrals"
    try:
        delay = await admit(deps, job)
        if delay is not None:
            # over a shared job limit: back to the queue, still PENDING, and not counted as a try
            await deps.redis.incr(deferrals_key)
            await deps.redis.expire(deferrals_key, deps.settings.job_result_ttl)
            raise Retry(defer=delay)
        deferred = int(await deps.redis.get(deferrals_key) or 0)
        attempt = ctx["job_try"] - deferred
        if attempt == 1 and deps.metrics is not None:
            await deps.metrics.enqueue_latency(_job_name(job),
                                               time.time() - ctx["enqueue_time"].timestamp())
        return await run_agent_job(deps, job, attempt=attempt, job_id=ctx["job_id"])
    except RetryLater as exc:
        raise Retry(defer=exc.delay) from None
    finally:
        structlog.contextvars.unbind_contextvars("job_id", "task_id", "request_id")


def _job_name(job: AgentJob) -> str:
    return names.INVOKE_AGENT_STREAMING if job.stream else names.INVOKE_AGENT


async def invoke_agent_async(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any] | None:
    return await _run(ctx, payload)


async def invoke_agent_with_streaming(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any] | None:
    return await _run(ctx, payload)


async def _heartbeat(deps: Deps, interval: float) -> None:
    """This worker's own heartbeat with its counters (arq's health key is shared by all workers)."""
    assert deps.stats is not None
    board = WorkerBoard(deps.redis, queue_name=deps.settings.queue_name)
    started_at = deps.clock()
    while True:
        try:
            await board.beat(deps.stats, started_at=started_at, now=deps.clock(), ttl=interval * 3)
        except AppError:
            log.warning("worker.heartbeat_failed")
        await asyncio.sleep(interval)


def _maintenance_job(name: str) -> Any:
    async def job(ctx: dict[str, Any], payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        task_id = payload.get("task_id") if isinstance(payload, dict) else None
        # cron job ids are "<name>:<slot ms>"; an on-demand run carries its task id instead
        slot = None if task_id else str(ctx["job_id"]).rpartition(":")[2]
        return await maintenance_runner.run(ctx["deps"], name, task_id=task_id, slot=slot)

    job.__qualname__ = job.__name__ = name
    return job


def maintenance_crons(settings: Settings) -> list[CronJob]:
    crons = []
    for name in maintenance_runner.JOBS:
        field = f"cron_{name}"
        crons.append(cron(_maintenance_job(name), name=name, unique=True, keep_result=MAINTENANCE_RESULT_TTL,
                          timeout=settings.job_time_limit, max_tries=1,
                          **cron_spec.parse(field, getattr(settings, field))))  # type: ignore[arg-type]
    return crons


def build_worker_settings(settings: Settings) -> type:
    """A WorkerSettings class for `settings` (tests build one per temporary environment)."""

    async def startup(ctx: dict[str, Any]) -> None:
        configure_logging(settings, process="worker")
        deps = await open_deps(settings, redis=ctx["redis"])
        deps.stats = WorkerStats()
        ctx["deps"] = deps
        ctx["heartbeat"] = asyncio.create_task(_heartbeat(deps, settings.worker_health_interval))

    async def shutdown(ctx: dict[str, Any]) -> None:
        deps: Deps | None = ctx.get("deps")
        beat: asyncio.Task[None] | None = ctx.get("heartbeat")
        if beat is not None:
            beat.cancel()
        if deps is not None:
            if deps.stats is not None:
                with contextlib.suppress(AppError):
                    await WorkerBoard(deps.redis, queue_name=settings.queue_name).remove(deps.stats.worker_id)
            await deps.aclose(close_redis=False)  # arq closes its own pool

    # Our runner enforces JOB_MAX_RETRIES itself (deferrals by the job rate limits are not tries),
    # so arq's own cap only guards against endless re-delivery.
    tries = settings.job_max_retries + 1 + MAX_DEFERRALS
    attrs = {
        "functions": [
            func(invoke_agent_async, name=names.INVOKE_AGENT, timeout=settings.job_time_limit,
                 keep_result=settings.job_result_ttl, max_tries=tries),
            func(invoke_agent_with_streaming, name=names.INVOKE_AGENT_STREAMING,
                 timeout=settings.stream_job_time_limit, keep_result=settings.job_result_ttl, max_tries=tries),
        ],
        "cron_jobs": maintenance_crons(settings),
        "redis_settings": redis_settings(settings) if settings.redis_url else None,
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        "health_check_interval": settings.worker_health_interval,
        "keep_result": settings.job_result_ttl,
        "job_serializer": serializer.serialize,
        "job_deserializer": serializer.deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
    }
    return type("WorkerSettings", (), attrs)
