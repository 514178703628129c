"""The worker entry point: `arq agent_service.worker.WorkerSettings` (the Procfile), or
`python -m agent_service worker`, which runs the same settings on FastWorker (it starts the next
job as soon as a slot frees). Agent jobs and the maintenance crons run in this one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

from agent_service.audit import service as audit_service
from agent_service.compose import MAINTENANCE, provide_parts
from agent_service.config import Settings, load_settings
from agent_service.errors import AppError, ConfigError
from agent_service.kit import error_reporting, serializer, tracing
from agent_service.kit.deps import Deps, open_deps
from agent_service.kit.metrics import WorkerStats
from agent_service.kit.redis import redis_settings
from agent_service.logging import configure_logging
from agent_service.ops.workers import WorkerBoard, heartbeat
from agent_service.tasks import jobs
from agent_service.tasks.queue import INVOKE_AGENT, INVOKE_AGENT_STREAMING
from agent_service.tasks.runner import JobFailed
from agent_service.tasks.sweeper import run_sweeper
from agent_service.webhooks import jobs as webhook_jobs


class _AgentJobLines(logging.Filter):
    """Drops arq's per-job lines (started, done, retrying) of the agent jobs: the job path logs
    its own, with the task id and the try (job.started, job.succeeded, job.retrying, …), and a busy
    worker would spend as much again on arq's copies. Its other lines (start-up, shutdown, errors,
    and the maintenance jobs' runs) stay."""

    NAMES = tuple(f":{f}" for f in (INVOKE_AGENT, INVOKE_AGENT_STREAMING))

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (record.levelno == logging.INFO and isinstance(args, tuple) and len(args) > 1
                    and isinstance(args[1], str) and args[1].endswith(self.NAMES))


_AGENT_JOB_LINES = _AgentJobLines()


def build_worker_settings(settings: Settings) -> type:
    """A WorkerSettings class for `settings` (tests build one per temporary environment)."""

    async def startup(ctx: dict[str, Any]) -> None:
        configure_logging(settings, process="worker")
        if _AGENT_JOB_LINES not in logging.getLogger("arq.worker").filters:
            logging.getLogger("arq.worker").addFilter(_AGENT_JOB_LINES)
        # each a no-op unless its setting is set; a failed job is an outcome stored on its task, not a bug
        error_reporting.setup(settings, process="worker", ignore=(JobFailed,))
        tracing.setup(settings, process="worker")
        # the jobs get their own pool with REDIS_TIMEOUT (arq's pool has no read timeout)
        deps = await open_deps(settings)
        provide_parts(deps)
        await audit_service.start_writer(deps)
        deps.stats = WorkerStats()
        if deps.metrics is not None:  # a round trip per job event would cost more than the job path's own
            deps.metrics.buffer()
            deps.on_close(deps.metrics.close)
        ctx["deps"] = deps
        ctx["heartbeat"] = asyncio.create_task(heartbeat(deps, settings.worker_health_interval))
        ctx["sweeper"] = asyncio.create_task(run_sweeper(deps))
        ctx["webhooks"] = asyncio.create_task(webhook_jobs.run_dispatcher(deps))

    async def shutdown(ctx: dict[str, Any]) -> None:
        deps: Deps | None = ctx.get("deps")
        for name in ("heartbeat", "sweeper", "webhooks"):
            background: asyncio.Task[None] | None = ctx.get(name)
            if background is not None:
                background.cancel()
        if deps is not None:
            if deps.stats is not None:
                with contextlib.suppress(AppError):
                    await WorkerBoard.of(deps).remove(deps.stats.worker_id)
            await deps.aclose()
        tracing.shutdown()
        error_reporting.shutdown()

    attrs = {
        "functions": [*jobs.agent_functions(settings), *webhook_jobs.functions(settings)],
        "cron_jobs": jobs.maintenance_crons(settings, MAINTENANCE),
        "redis_settings": redis_settings(settings) if settings.redis_url else None,
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay,
        "health_check_interval": settings.worker_health_interval,
        "keep_result": 0,
        "log_results": False,  # a job's output is the user's data: never in the worker's log
        "job_serializer": serializer.serialize,
        "job_deserializer": serializer.deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
        "job_completion_wait": settings.worker_drain_seconds,
    }
    return type("WorkerSettings", (), attrs)


def __getattr__(name: str) -> Any:
    # `arq agent_service.worker.WorkerSettings` reads this; built on first access so importing
    # the module (tests, `python -m agent_service worker`) does not read the environment
    if name == "WorkerSettings":
        try:
            settings = load_settings()
            settings.require_stores()
        except ConfigError as exc:  # the arq CLI would print a traceback: one line naming the variable
            print(f"configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        return build_worker_settings(settings)
    raise AttributeError(name)
