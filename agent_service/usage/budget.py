"""Monthly token budgets in Redis: every process reserves and settles against the same counters,
each step one Lua script (atomic), so concurrent submissions on any number of machines cannot
together pass a budget.

Per user and month (UTC) three keys: a hash {used, reserved}; the holds, ref → tokens held (a
ref is a task id, or a sync call's id); and when each hold lapses (a sorted set). A reservation
passes only if used + reserved + what it asks for stays within the limit; a batch reserves for
all its tasks at once or not at all. A run's end settles its hold: the hold goes, what it really
used is added. A hold nobody settles (a task cancelled while queued and never released, a lost
job) lapses at its deadline, so a budget can be held back for a while but never overrun.

`used` is seeded from SQL (the `usage` table, the durable truth) the first time a month's hash
is needed, so a Redis restart or a budget set mid-month starts from what was really used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from agent_service.kit.redis import redis_guard

TTL_SECONDS = 40 * 24 * 3600  # a month's holds outlive it a little (settles that arrive late)
# the counters of a user nobody reserves for go soon (a budget removed, then set again later,
# starts again from SQL rather than from counters that missed the runs in between)
COUNTERS_TTL_SECONDS = 3600
NEEDS_SEED = -1

# Holds past their deadline go (KEYS counters, holds, deadlines; `now` ms).
LAPSE = """
local function lapse(now)
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, ref in ipairs(lapsed) do
    local held = tonumber(redis.call('HGET', KEYS[2], ref) or '0')
    if held > 0 and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'reserved', -held) end
    redis.call('HDEL', KEYS[2], ref)
  end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
end
"""

# KEYS counters, holds, deadlines; ARGV limit, tokens per ref, now ms, deadline ms, ttl s,
# counters ttl s, refs… Returns {1 | 0 | -1 (seed first), used, reserved (after)}.
_RESERVE = LAPSE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
lapse(tonumber(ARGV[3]))
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local each = tonumber(ARGV[2])
local want = (#ARGV - 6) * each
redis.call('EXPIRE', KEYS[1], ARGV[6])
if used + reserved + want > tonumber(ARGV[1]) then return {0, used, reserved} end
for i = 7, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], each)
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[i])
end
redis.call('HINCRBY', KEYS[1], 'reserved', want)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return {1, used, reserved + want}
"""

# KEYS counters, holds, deadlines; ARGV used (from SQL), counters ttl s, now ms. A month not
# seeded yet takes `used`, and as `reserved` the holds still standing.
_SEED = LAPSE + """
lapse(tonumber(ARGV[3]))
if redis.call('EXISTS', KEYS[1]) == 0 then
  local reserved = 0
  for _, held in ipairs(redis.call('HVALS', KEYS[2])) do reserved = reserved + tonumber(held) end
  redis.call('HSET', KEYS[1], 'used', ARGV[1], 'reserved', reserved)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# KEYS counters, holds, deadlines; ARGV tokens used, counters ttl s, refs… Each ref's hold goes;
# `used` grows by the tokens (only in a month seeded: a later seed reads them from SQL).
_SETTLE = """
local freed = 0
for i = 3, #ARGV do
  local held = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  if held > 0 then freed = freed + held end
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if freed > 0 then redis.call('HINCRBY', KEYS[1], 'reserved', -freed) end
  local used = tonumber(ARGV[1])
  if used > 0 then redis.call('HINCRBY', KEYS[1], 'used', used) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return freed
"""


class Decision:
    __slots__ = ("ok", "reserved", "used")

    def __init__(self, ok: int, used: int, reserved: int) -> None:
        self.ok, self.used, self.reserved = ok, used, reserved


class Budgets:
    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._prefix = f"{prefix}budget:"
        self._reserve = redis.register_script(_RESERVE)
        self._seed = redis.register_script(_SEED)
        self._settle = redis.register_script(_SETTLE)
        self._redis = redis

    def keys(self, owner_id: str, month: str) -> list[str]:
        base = f"{self._prefix}{{{owner_id}}}:{month}"  # one hash slot per user and month (Cluster)
        return [base, base + ":held", base + ":due"]

    @redis_guard
    async def reserve(self, owner_id: str, month: str, refs: Sequence[str], *, limit: int, each: int, now_ms: int,
                      deadline_ms: int) -> Decision:
        got = await self._reserve(keys=self.keys(owner_id, month),
                                  args=[limit, each, now_ms, deadline_ms, TTL_SECONDS, COUNTERS_TTL_SECONDS, *refs])
        return Decision(int(got[0]), int(got[1]), int(got[2]))

    @redis_guard
    async def seed(self, owner_id: str, month: str, used: int, *, now_ms: int) -> None:
        await self._seed(keys=self.keys(owner_id, month), args=[used, COUNTERS_TTL_SECONDS, now_ms])

    @redis_guard
    async def settle(self, owner_id: str, month: str, refs: Sequence[str], *, used: int) -> None:
        await self._settle(keys=self.keys(owner_id, month), args=[used, COUNTERS_TTL_SECONDS, *refs])

    @redis_guard
    async def counters(self, owner_id: str, month: str) -> tuple[int, int] | None:
        """(used, reserved) of a seeded month; None if it is not."""
        got: list[Any] = await self._redis.hmget(self.keys(owner_id, month)[0], ["used", "reserved"])  # type: ignore[misc]
        if got[0] is None:
            return None
        return int(got[0]), int(got[1] or 0)
