"""The arq adapter: job function names, the queue score (priority and per-user fairness), and
enqueue / dequeue / forget / depth over arq's keys. The only module of the domain (with jobs.py)
that knows arq.

Pick order. arq starts due jobs in ascending score, and a job is due once its score is at most
the worker's clock. A job queued to run now (not scheduled) is scored, in ms,

    score = enqueue time - shift(priority) - W + min(n, N) * S

- shift: 60 s for high, 30 s for normal, 0 for low;
- n: how many jobs of the same owner and of the same or a higher priority are already waiting
  (queued in the last W and not yet picked up by a worker: the owner's `waiting:<priority>`
  sets), counted by the enqueue script in the one round trip that queues the job;
- S = 5 s, N = 12, W = N * S = 60 s.

Every score is at most the enqueue time, so the job is due at once (a score in the future means
"deferred" to arq: the job would not run even on an idle worker).

- Fairness: a user's n-th waiting job is placed as if submitted n * S later. A job of a user with
  nothing waiting, submitted d < W seconds after another user's burst of its priority, goes after
  at most 1 + d / S jobs of that burst (within S: after the one picked first); that user's n-th
  job after about n + d / S of them, so bursts interleave up to N deep. Beyond N waiting jobs a
  burst keeps its submission order. A user at their running cap (tasks/fairness.py) holds up
  nobody: their extra jobs are parked, and when one of their slots frees the first is woken at
  max(own score, now - W), the place of a low job submitted then by a user with nothing waiting.
- Priority: a user's job counts only their waiting jobs of its priority or higher, so their own
  lower ones never hold it up: with fewer than 30 s / S = 6 high jobs waiting, their next high job
  goes before all their normal ones. Across users a priority level is worth 6 waiting jobs: a
  burst marked high gains 6 places over another user's normal job, not the whole queue.
- Starvation bound: a job can only be overtaken by jobs submitted less than 60 s (the largest
  shift difference) + W = 120 s after it (after its time, for a scheduled or woken job).

Scheduled jobs keep their exact time (no shift, not counted as waiting): they never start early.
Jobs queued again (lost, admin retry) are scored as low jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec
from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from agent_service.config import Settings
from agent_service.kit import serializer, wakeup
from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn, redis_guard
from agent_service.kit.rounds import Round
from agent_service.tasks.fairness import user_key


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


# Queue a job unless its id is taken (arq's enqueue_job, in one round trip), scored as the module
# docstring says, and wake an idle worker (kit/wakeup.py). KEYS job, result, queue, wake, then (a
# job with an owner) the owner's waiting set of the job's priority and those of higher ones; ARGV
# job id, job, job ttl ms, base score, now ms, W ms, N, S ms. Returns how many of the owner's jobs
# were counted as waiting, -1 if the id is taken.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return -1 end
local now = tonumber(ARGV[5])
local waiting = 0
for i = 5, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  waiting = waiting + redis.call('ZCARD', KEYS[i])
end
if #KEYS >= 5 then
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[6]), ARGV[1])
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
local score = tonumber(ARGV[4]) + math.min(waiting, tonumber(ARGV[7])) * tonumber(ARGV[8])
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], score, ARGV[1])
""" + wakeup.wake_lua("KEYS[4]") + """
return waiting
"""


def waiting_key(prefix: str, owner: str, priority: str) -> str:
    """The owner's jobs of `priority` queued and not yet picked up, scored by when they stop counting."""
    return user_key(prefix, owner, f"waiting:{priority}")


def waiting_keys(prefix: str, owner: str) -> list[str]:
    return [waiting_key(prefix, owner, p) for p in SHIFT_SECONDS]


class JobQueue:
    def __init__(self, redis: RedisConn, settings: Settings) -> None:
        self.redis = redis
        self._queue_name = settings.queue_name
        self._prefix = settings.redis_key_prefix
        self._dequeue = redis.register_script(_DEQUEUE)
        self._enqueue = redis.register_script(_ENQUEUE)

    @classmethod
    def of(cls, deps: Deps) -> JobQueue:
        return cls(deps.redis, deps.settings)

    @redis_guard
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    @redis_guard
    async def enqueue(
        self, function: str, payload: msgspec.Struct | dict[str, Any], *, job_id: str,
        defer_until: datetime | None = None, defer_by: float | None = None, into: Round | None = None,
    ) -> bool:
        """Queue `function(payload)` under `job_id`, at exactly `defer_until` for a scheduled job and
        otherwise at the score of the module docstring (`defer_by` is the priority shift `schedule`
        gave); False if a job with that id exists. One round trip. An agent job's owner is its
        payload's owner_id."""
        arg = msgspec.to_builtins(payload) if isinstance(payload, msgspec.Struct) else payload
        now = timestamp_ms()
        job = serialize_job(function, (arg,), {}, None, now, serializer=serializer.serialize)
        keys = [job_key_prefix + job_id, result_key_prefix + job_id, self._queue_name,
                wakeup.wake_key(self._queue_name)]
        if defer_until is not None or (defer_by or 0) > 0:  # a time to run at, kept exactly
            score = int(defer_until.timestamp() * 1000) if defer_until else now + int((defer_by or 0) * 1000)
        else:
            shift = -(defer_by or 0.0)
            score = now - int(shift * 1000) - FAIR_WINDOW_MS
            owner = arg.get("owner_id") if function in JOB_FOR_KIND.values() else None
            if isinstance(owner, str):
                # its own priority's set first (the job is added there), then those of higher ones
                ahead = sorted((p for p, v in SHIFT_SECONDS.items() if v >= shift), key=SHIFT_SECONDS.__getitem__)
                keys += [waiting_key(self._prefix, owner, p) for p in ahead]
        ttl = max(0, score - now) + self.redis.expires_extra_ms  # arq's: a day past its time
        args: list[str | bytes | int] = [job_id, job, ttl, score, now, FAIR_WINDOW_MS, FAIR_MAX_WAITING,
                                         FAIR_STEP_MS]
        if into is not None:  # one of the writes of the caller's round (its reply: into.last())
            into.script(_ENQUEUE, keys, args)
            return True
        return int(await self._enqueue(keys=keys, args=args)) >= 0

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
FAIR_STEP_MS = 5_000  # S: a user's next waiting job counts as submitted this much later
FAIR_MAX_WAITING = 12  # N: waiting jobs beyond this add nothing more
FAIR_WINDOW_MS = FAIR_STEP_MS * FAIR_MAX_WAITING  # W: also how long a queued job counts as waiting
STARVATION_BOUND_SECONDS = max(SHIFT_SECONDS.values()) - min(SHIFT_SECONDS.values()) + FAIR_WINDOW_MS / 1000


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


def lease_into(rnd: Round, job_id: str, seconds: float) -> None:
    """A running job's claim shortened to one lease of `seconds`, as one of a round's writes (the
    first slice of `hold_lease`, sent with the job's other writes at its start)."""
    rnd.pipe.pexpire(in_progress_key_prefix + job_id, int(seconds * 1000))


async def hold_lease(redis: RedisConn, job_id: str, seconds: float,
                     renew: Callable[[], Awaitable[None]] | None = None, *, first_in: float = 0.0) -> None:
    """Keep a running job's claim alive in `seconds`-long slices, renewed every third of that, until
    cancelled. arq marks a started job in progress for its longest time limit (+10 s); shortening
    that mark to the lease means a job whose worker died runs again within `seconds` on any
    worker, whatever its time limit. Uses only arq's public key prefix (see kit/arq_contract.py).
    `renew` is renewed with it (the owner's running slot, tasks/fairness.py). `first_in`: when the
    first renewal is due (the caller sent the first slice itself, `lease_into`)."""
    key = in_progress_key_prefix + job_id
    ms = int(seconds * 1000)
    if first_in:
        await asyncio.sleep(first_in)
    while True:
        with contextlib.suppress(RedisError, OSError):
            await redis.pexpire(key, ms)
            if renew is not None:
                await renew()
        await asyncio.sleep(seconds / 3)
