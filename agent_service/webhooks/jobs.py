"""The arq side of webhooks: the delivery pass (webhooks/dispatch.py) as an arq job.

Two things start a pass, on any worker: a cron every WEBHOOK_POLL_SECONDS (each slot runs once
across the workers), which picks up retries as they fall due and anything a wake-up missed; and
the wake-up itself, which queues a pass the moment a task event or a redelivery is written, so a
first delivery does not wait for the cron. The wake-up is fire-and-forget (`Waker.poke` does no
I/O and never raises): the state change that caused it is never slowed or failed by it, and a
lost wake-up costs at most one cron interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq.cron import CronJob, cron
from redis.exceptions import RedisError

from agent_service.config import Settings
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.webhooks import dispatch

log = get_logger("agent_service.webhooks")
PASS = "deliver_webhooks"


def function_name(settings: Settings) -> str:
    """Prefixed: arq keys a cron run by `<name>:<slot>` across the whole Redis."""
    return f"{settings.redis_key_prefix}{PASS}"


def wake_job_id(settings: Settings) -> str:
    # one id: wake-ups while a pass is queued are one pass
    return f"{settings.redis_key_prefix}webhooks:wake"


async def deliver_webhooks(ctx: dict[str, Any]) -> None:
    done = await dispatch.run_pass(ctx["deps"])
    if done.events or done.attempts:
        log.info("webhook.pass", events=done.events, attempts=done.attempts, succeeded=done.succeeded)


def crons(settings: Settings) -> list[CronJob]:
    every = settings.webhook_poll_seconds
    return [cron(deliver_webhooks, name=function_name(settings), second=set(range(0, 60, every)),
                 run_at_startup=True, unique=True, keep_result=0, max_tries=1,
                 timeout=dispatch.PASS_BUDGET + settings.webhook_timeout + 30)]


class Waker:
    """Queues a delivery pass soon after `poke()`; pokes while one is being queued are one."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._task: asyncio.Task[None] | None = None
        self._again = False
        deps.on_close(self.close)

    @classmethod
    def of(cls, deps: Deps) -> Waker:
        return cls(deps)

    def poke(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        try:
            self._task = asyncio.get_running_loop().create_task(self._queue())
        except RuntimeError:  # no loop (a synchronous caller): the cron will do
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
