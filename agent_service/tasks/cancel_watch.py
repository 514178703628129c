"""A running job stopped when someone asks for its task to be cancelled (tasks/runner.py runs the
agent under it).

Our own mechanism (a per-task Redis key, polled while the job runs) instead of arq's abort: it
works under the plain `arq` CLI too, needs no `allow_abort_jobs`, and a stale request cannot kill
a later run because a re-queue clears the key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.tasks import lifecycle
from agent_service.tasks.schemas import JobResult

CANCEL_POLL_SECONDS = 0.25


class CancelledByRequest(Exception):
    pass


async def cancellable(deps: Deps, task_id: str, work: Awaitable[JobResult]) -> JobResult:
    """Run `work`, cancelling it when the task's cancel is asked for (CancelledByRequest then);
    a cancel from outside (hard limit, shutdown) takes the work down too and goes on up."""
    job = asyncio.ensure_future(work)
    requested = False

    async def watch() -> None:
        nonlocal requested
        while not job.done():
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if requested:
                # a cancellation that lands inside a Redis call can be swallowed by the driver:
                # repeat it until the work has stopped
                job.cancel()
                continue
            try:
                if await lifecycle.live(deps).cancel_requested(task_id):
                    requested = True
                    job.cancel()
            except AppError:
                continue  # Redis blip: keep the job running, look again next time

    watcher = asyncio.create_task(watch())
    try:
        result = await job
        if requested:  # it finished although asked to stop: the request wins
            raise CancelledByRequest
        return result
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if requested and not (current and current.cancelling()):
            raise CancelledByRequest from None
        job.cancel()  # we are being cancelled from outside (hard limit, shutdown): take the work down too
        raise
    finally:
        watcher.cancel()
