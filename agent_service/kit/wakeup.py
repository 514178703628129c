"""The worker's side of an arq queue, in as few round trips as possible: claim the due jobs for the
free slots in one script, and sleep on a wake-up signal instead of polling.

**Claim.** arq's poll reads up to `queue_read_limit` due ids, then spends about four round trips on
each (WATCH, EXISTS, ZSCORE, MULTI/EXEC) to mark it in progress, even on ids another slot is
already running. Here one script walks the due jobs in score order, marks the first `want` that
are not in progress (SET NX PX: atomic, so two workers never start one job) and answers, in the
same reply, when this worker next has a reason to look: the score of the next deferred job and the
soonest expiry of an in-progress mark among the due ones (a dead worker's job, claimable then).

**Wake-up.** Whatever makes a job due now (an enqueue, a slot given back that wakes a parked job,
a job put back in the queue) pushes one element on the queue's wake key (`<queue>:wake`, at most
one element). An idle worker blocks on it (BLPOP), so a new job starts within a round trip or two
instead of up to a poll delay later, and an idle worker sends Redis next to nothing. A claim that
filled its slots while claimable jobs remain pushes the signal on, to the next idle worker.
The signal is only ever a hint: a worker always claims from the queue itself, so a lost or extra
signal costs latency or one empty claim, never a job.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, NamedTuple, cast

from redis.asyncio import Redis

WAKE_SUFFIX = ":wake"


def wake_key(queue_name: str) -> str:
    return queue_name + WAKE_SUFFIX


def wake_lua(key: str) -> str:
    """Lua lines, for a script that makes a job due, that wake one idle worker (`key`: the
    script's KEYS entry holding the queue's wake key)."""
    return f"redis.call('LPUSH', {key}, '1')\nredis.call('LTRIM', {key}, 0, 0)\n"


async def wake(redis: Redis, queue_name: str) -> None:
    """Wake one idle worker of the queue (for jobs queued by arq's own enqueue_job, which knows
    nothing of the signal: they would otherwise wait for an idle worker's fallback poll)."""
    pipe = redis.pipeline(transaction=False)
    pipe.lpush(wake_key(queue_name), b"1")
    pipe.ltrim(wake_key(queue_name), 0, 0)
    await pipe.execute()


# KEYS queue, wake; ARGV now ms, how many to claim, scan limit, in-progress mark ms, in-progress
# key prefix. Returns {claimed (id, score, id, score, ...), next deferred score or false, soonest
# in-progress expiry among the due jobs in ms or false}. The in-progress keys are built from the
# prefix, as arq names them (a single Redis, never a cluster: arq itself assumes one).
_CLAIM = """
local now, want, scan = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local claimed, n, held, more = {}, 0, false, false
local offset, step = 0, want + 16
while offset < scan and not more do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', offset, step)
  for i = 1, #due, 2 do
    local mark = ARGV[5] .. due[i]
    if n < want then
      if redis.call('SET', mark, '1', 'NX', 'PX', ARGV[4]) then
        claimed[#claimed + 1] = due[i]
        claimed[#claimed + 1] = due[i + 1]
        n = n + 1
      else
        local ttl = redis.call('PTTL', mark)
        if ttl > 0 and (not held or ttl < held) then held = ttl end
      end
    elseif redis.call('EXISTS', mark) == 0 then
      more = true  -- a claimable job is left over: wake the next idle worker
      break
    end
  end
  if #due < 2 * step then break end
  offset = offset + step
end
if more then
""" + wake_lua("KEYS[2]") + """end
local nxt = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
return {claimed, nxt[2] or false, held}
"""


class Claimed(NamedTuple):
    jobs: list[tuple[str, int]]  # (job id, queue score), in score order
    next_due_ms: int | None  # the score of the next deferred job
    held_ms: int | None  # how soon a due job's in-progress mark expires (its worker may be dead)


class QueueWaiter:
    """Claims and wake-ups of one worker, on its own arq pool."""

    def __init__(self, redis: Redis, queue_name: str, *, scan: int, mark_prefix: str) -> None:
        self._redis = redis
        self._queue = queue_name
        self._wake = wake_key(queue_name)
        self._scan = scan
        self._prefix = mark_prefix
        self._claim = redis.register_script(_CLAIM)

    async def claim(self, want: int, *, now_ms: int, mark_ms: int) -> Claimed:
        reply: list[Any] = await self._claim(keys=[self._queue, self._wake],
                                             args=[now_ms, want, self._scan, mark_ms, self._prefix])
        flat, nxt, held = reply
        jobs = [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return Claimed(jobs, None if nxt is None else int(float(nxt)), None if held is None else int(held))

    async def wait(self, seconds: float) -> bool:
        """Block until woken or `seconds` pass; True if woken."""
        # BLPOP takes fractions of a second (Redis 6+), whatever redis-py's annotation says
        popped = await cast("Awaitable[Any]", self._redis.blpop([self._wake], timeout=seconds))  # type: ignore[arg-type]
        return popped is not None

    async def pass_on(self) -> None:
        """A signal this worker cannot use (it filled up meanwhile): for another idle worker."""
        await wake(self._redis, self._queue)
