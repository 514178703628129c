"""How delivery passes (webhooks/dispatch.py) are started, on any worker.

- Every worker runs `run_dispatcher`: a pass every WEBHOOK_POLL_SECONDS, which picks up retries as
  they fall due and anything a wake-up missed — a loop beside the sweeper rather than an arq cron,
  so a pass every few seconds adds no job to the queue, no line to the log and nothing to the
  queue's numbers.
- A task event or a redelivery wakes a pass at once: written in a worker (most task events),
  `Waker.poke` wakes that worker's loop; written in a web process (a queued task cancelled, a
  redelivery, `enqueue_event`), it queues the arq job `deliver_webhooks`, which any worker runs.

`poke` does no I/O and never raises: the state change that caused it is never slowed or failed by
it, and a lost wake-up costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq.worker import Function, func
from redis.exceptions import RedisError

from agent_service.config import Settings
from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.webhooks import dispatch

log = get_logger("agent_service.webhooks")
PASS = "deliver_webhooks"


def function_name(settings: Settings) -> str:
    return f"{settings.redis_key_prefix}{PASS}"


def wake_job_id(settings: Settings) -> str:
    # one id: wake-ups while a pass is queued are one pass
    return f"{settings.redis_key_prefix}webhooks:wake"


async def _pass(deps: Deps) -> None:
    try:
        done = await dispatch.run_pass(deps)
    except AppError:
        log.warning("webhook.pass_unavailable")
        return
    if done.events or done.attempts:
        log.info("webhook.pass", events=done.events, attempts=done.attempts, succeeded=done.succeeded)


async def deliver_webhooks(ctx: dict[str, Any]) -> None:
    await _pass(ctx["deps"])


GATHER_SECONDS = 0.2


def functions(settings: Settings) -> list[Function]:
    return [func(deliver_webhooks, name=function_name(settings), keep_result=0, max_tries=1,
                 timeout=dispatch.PASS_BUDGET + settings.webhook_timeout + 30)]


async def run_dispatcher(deps: Deps) -> None:
    """A worker's loop: a pass when poked, and every WEBHOOK_POLL_SECONDS (until cancelled)."""
    wake = deps.part(Waker.of).listen()
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deps.settings.webhook_poll_seconds):
                await wake.wait()
        # a drain finishes tasks by the hundred a second: let a moment's events gather into one pass
        await asyncio.sleep(GATHER_SECONDS)
        wake.clear()
        try:
            await _pass(deps)
        except Exception:  # a bug in one pass must not end every later one
            log.exception("webhook.pass_failed")


class Waker:
    """Starts a delivery pass soon after `poke()`: this worker's own (`listen`), or else one queued
    for any worker; pokes while one is being queued are one."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._local: asyncio.Event | None = None
        deps.on_close(self.close)

    @classmethod
    def of(cls, deps: Deps) -> Waker:
        return cls(deps)

    def listen(self) -> asyncio.Event:
        """From now on pokes set this event (the worker's own loop runs the pass)."""
        self._local = asyncio.Event()
        return self._local

    def poke(self) -> None:
        if self._local is not None:
            self._local.set()
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        try:
            self._task = asyncio.get_running_loop().create_task(self._queue())
        except RuntimeError:  # no loop (a synchronous caller): the workers' poll will do
            self._task = None

    async def _queue(self) -> None:
        settings = self._deps.settings
        while True:
            self._again = False
            with contextlib.suppress(RedisError, OSError):
                await self._deps.redis.enqueue_job(function_name(settings), _job_id=wake_job_id(settings),
                                                   _queue_name=settings.queue_name)
            if not self._again:
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
