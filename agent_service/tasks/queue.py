"""The arq adapter: job function names, priority as a queue-score shift, and enqueue / dequeue /
forget / depth over arq's keys. The only module of the domain (with jobs.py) that knows arq.

Priority: a job's score is its enqueue time in ms; a high job's score is moved 60 s into the
past and a normal job's 30 s, a low job's not at all. So under a backlog high jobs start before
normal before low, yet a job can only be overtaken by jobs submitted less than 60 s (high over
low) or 30 s (high over normal, normal over low) after it: that is the starvation bound.
Scheduled jobs keep their exact time (no shift), so they never start early.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

import msgspec
from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from redis.exceptions import RedisError

from agent_service.config import Settings
from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn, redis_guard


def worker_health_key(settings: Settings) -> str:
    """arq's heartbeat key: written every WORKER_HEALTH_INTERVAL, expiring one second later."""
    return settings.queue_name + health_check_key_suffix


# Remove a job that has not started: atomic, so a worker cannot pick it up halfway.
_DEQUEUE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then redis.call('DEL', KEYS[2], KEYS[4]) end
return removed
"""


class JobQueue:
    def __init__(self, redis: RedisConn, settings: Settings) -> None:
        self.redis = redis
        self._queue_name = settings.queue_name
        self._dequeue = redis.register_script(_DEQUEUE)

    @classmethod
    def of(cls, deps: Deps) -> JobQueue:
        return cls(deps.redis, deps.settings)

    @redis_guard
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    @redis_guard
    async def enqueue(
        self, function: str, payload: msgspec.Struct | dict[str, Any], *, job_id: str,
        defer_until: datetime | None = None, defer_by: float | None = None,
    ) -> bool:
        """Queue `function(payload)` under `job_id`; False if a job with that id already exists."""
        arg = msgspec.to_builtins(payload) if isinstance(payload, msgspec.Struct) else payload
        job = await self.redis.enqueue_job(
            function, arg, _job_id=job_id, _queue_name=self._queue_name,
            _defer_until=defer_until, _defer_by=timedelta(seconds=defer_by) if defer_by else None,
        )
        return job is not None

    @redis_guard
    async def dequeue(self, job_id: str) -> bool:
        """Take a queued or deferred (not running) job off the queue; True if it will never start."""
        keys = [self._queue_name, job_key_prefix + job_id, in_progress_key_prefix + job_id, retry_key_prefix + job_id]
        return bool(await self._dequeue(keys=keys, args=[job_id]))

    @redis_guard
    async def exists(self, job_id: str) -> bool:
        """Whether the queue still knows the job (queued, deferred, retrying or running)."""
        return bool(await self.redis.exists(job_key_prefix + job_id))

    @redis_guard
    async def forget(self, job_id: str) -> None:
        """Drop a finished job's kept result so the same id can be queued again."""
        await self.redis.delete(result_key_prefix + job_id, retry_key_prefix + job_id)

    @redis_guard
    async def depth(self, *, now_ms: int) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self._queue_name, "-inf", now_ms)
        pipe.zcount(self._queue_name, f"({now_ms}", "+inf")
        due, deferred = await pipe.execute()
        # arq keeps a running job in the queue until it ends: those are in progress, not queued.
        # arq's in-progress marks are global to the Redis: count only the ones of this queue's jobs
        ids = [k[len(in_progress_key_prefix):] async for k in
               self.redis.scan_iter(match=in_progress_key_prefix + "*", count=500)]
        running = 0
        if ids:
            check = self.redis.pipeline(transaction=False)
            for job_id in ids:
                check.zscore(self._queue_name, job_id)
            running = sum(score is not None for score in await check.execute())
        return {"queued": max(0, int(due) - running), "deferred": int(deferred), "running": running}


SHIFT_SECONDS = {"high": 60.0, "normal": 30.0, "low": 0.0}
STARVATION_BOUND_SECONDS = max(SHIFT_SECONDS.values()) - min(SHIFT_SECONDS.values())


def schedule(priority: str, run_at: datetime | None) -> tuple[datetime | None, float | None]:
    """(defer_until, defer_by) for arq's enqueue_job."""
    if run_at is not None:
        return run_at, None
    shift = SHIFT_SECONDS[priority]
    return None, (-shift if shift else None)


INVOKE_AGENT = "invoke_agent_async"
INVOKE_AGENT_STREAMING = "invoke_agent_with_streaming"

KIND_INVOKE = "invoke"
KIND_STREAM = "stream"

JOB_FOR_KIND = {KIND_INVOKE: INVOKE_AGENT, KIND_STREAM: INVOKE_AGENT_STREAMING}


async def hold_lease(redis: RedisConn, job_id: str, seconds: float) -> None:
    """Keep a running job's claim alive in `seconds`-long slices, renewed every third of that, until
    cancelled. arq marks a started job in progress for its longest time limit (+10 s); shortening
    that mark to the lease means a job whose worker died runs again within `seconds` on any
    worker, whatever its time limit. Uses only arq's public key prefix (see kit/arq_contract.py)."""
    key = in_progress_key_prefix + job_id
    ms = int(seconds * 1000)
    while True:
        with contextlib.suppress(RedisError, OSError):
            await redis.pexpire(key, ms)
        await asyncio.sleep(seconds / 3)
