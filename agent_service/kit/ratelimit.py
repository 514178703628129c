"""Rate limits shared by every process: GCRA in one Lua script, one atomic round trip per check.

GCRA keeps one number per key, the "theoretical arrival time" (TAT). A request costs one
emission interval T = period / limit; it is allowed while TAT - now stays within the burst
(limit * T), so a fresh key admits exactly `limit` requests at once and then one every T.
Several keys can be checked together (a job's own bucket and the global one): all are charged
only if all allow, so a denial never uses up another bucket. Time is Redis's TIME, so web
processes with skewed clocks agree; tests may pass `now_ms` instead.

`Quota` is the API's way in: a process takes a few tokens of a bucket at once (a lease, at most
1 % of the limit, never more than half of what the bucket still holds) and spends them locally
for up to LEASE_SECONDS, so a busy caller costs one Redis round trip per lease instead of one per
request. Leased tokens are charged before they are spent: every process together never admits
more than the limit. What a lease leaves unspent is given back with the next lease. Limits under
100 per period lease one token at a time: exactly the per-request behaviour.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence

import msgspec
from redis.asyncio import Redis

from agent_service.kit.redis import redis_guard

_GCRA = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cost = tonumber(ARGV[2])
local n = #KEYS
local new_tats = {}
local worst_wait, first_remaining, first_reset = 0, 0, 0
for i = 1, n do
  local t_ms = tonumber(ARGV[1 + 2 * i])
  local limit = tonumber(ARGV[2 + 2 * i])
  local burst = t_ms * limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + t_ms * cost
  local wait = new_tat - burst - now
  if wait > worst_wait then worst_wait = wait end
  new_tats[i] = new_tat
  if i == 1 then
    if wait > 0 then
      first_remaining = math.max(0, math.floor((burst - (tat - now)) / t_ms))
      first_reset = tat - now
    else
      first_remaining = math.floor((burst - (new_tat - now)) / t_ms)
      first_reset = new_tat - now
    end
  end
end
if worst_wait > 0 then
  return {0, first_remaining, math.ceil(worst_wait), math.ceil(first_reset)}
end
for i = 1, n do
  redis.call('SET', KEYS[i], new_tats[i], 'PX', math.max(1, math.ceil(new_tats[i] - now)))
end
return {1, first_remaining, 0, math.ceil(first_reset)}
"""


# Take up to ARGV[4] tokens (never more than half of what is left, at least one), after giving
# back ARGV[5] unspent ones. Returns {granted, remaining, wait ms, reset ms}; granted 0 = denied.
_LEASE = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local t_ms = tonumber(ARGV[2])
local burst = t_ms * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) - t_ms * tonumber(ARGV[5])
if tat < now then tat = now end
local available = math.floor((burst - (tat - now)) / t_ms + 1e-9)
if available < 1 then
  if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[1], tat, 'PX', math.max(1, math.ceil(tat - now))) end
  return {0, 0, math.ceil(tat + t_ms - burst - now), math.ceil(tat - now)}
end
local granted = math.max(1, math.min(tonumber(ARGV[4]), math.floor(available / 2)))
local new_tat = tat + t_ms * granted
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(new_tat - now)))
return {granted, math.floor((burst - (new_tat - now)) / t_ms + 1e-9), 0, math.ceil(new_tat - now)}
"""
LEASE_SECONDS = 1.0  # a lease's tokens are spent within this, or given back
LEASE_FRACTION = 100  # a lease holds at most limit / this tokens
LEASE_MAX = 50


class Limit(msgspec.Struct, frozen=True):
    limit: int  # requests per period
    period: float = 60.0  # seconds


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the bucket is full again
    retry_after: float  # seconds until a denied request would pass (0 when allowed)


class RateLimiter:
    def __init__(self, redis: Redis, *, prefix: str = "rl:") -> None:
        self._prefix = prefix
        self._script = redis.register_script(_GCRA)

    @redis_guard
    async def hit(self, checks: Sequence[tuple[str, Limit]], *, cost: int = 1, now_ms: int | None = None) -> Decision:
        """Charge every (key, limit) at once, or none. The Decision describes the first one."""
        args: list[float] = [-1 if now_ms is None else now_ms, cost]
        for _, lim in checks:
            args += [lim.period * 1000.0 / lim.limit, lim.limit]
        allowed, remaining, wait_ms, reset_ms = await self._script(
            keys=[self._prefix + key for key, _ in checks], args=args
        )
        return Decision(allowed=bool(allowed), limit=checks[0][1].limit, remaining=int(remaining),
                        reset_after=int(reset_ms) / 1000, retry_after=int(wait_ms) / 1000)


class _Lease:
    __slots__ = ("left", "remaining", "reset_ms", "taken_at")

    def __init__(self, left: int, remaining: int, reset_ms: float, taken_at: float) -> None:
        self.left = left  # tokens of this lease not spent yet
        self.remaining = remaining  # what the bucket held once the lease was taken
        self.reset_ms = reset_ms
        self.taken_at = taken_at


class Quota:
    """Leases of GCRA buckets (see the module docstring): one process's view of the API limits."""

    def __init__(self, redis: Redis, *, prefix: str = "rl:", clock: Callable[[], float] = time.monotonic) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_LEASE)
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def take(self, key: str, lim: Limit) -> Decision:
        """One token of `key`'s bucket; a Decision as RateLimiter.hit's. Raises QueueUnavailable
        when a lease is needed and Redis cannot give one."""
        for _ in range(8):  # a lease being taken by another request of this process: wait and share it
            if (decision := self._spend(key, lim)) is not None:
                return decision
            waiting = self._inflight.get(key)
            if waiting is None:
                break
            await asyncio.shield(waiting)
        else:
            return await self._lease(key, lim)  # outrun by others eight times: take one of our own
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            return await self._lease(key, lim)
        finally:
            del self._inflight[key]
            done.set_result(None)

    def _spend(self, key: str, lim: Limit) -> Decision | None:
        lease = self._leases.get(key)
        if lease is None or lease.left < 1 or self._clock() - lease.taken_at >= LEASE_SECONDS:
            return None
        lease.left -= 1
        t_ms = lim.period * 1000.0 / lim.limit
        return Decision(allowed=True, limit=lim.limit, remaining=lease.remaining + lease.left,
                        reset_after=max(0.0, lease.reset_ms - lease.left * t_ms) / 1000, retry_after=0)

    @redis_guard
    async def _lease(self, key: str, lim: Limit) -> Decision:
        old = self._leases.pop(key, None)
        unspent = old.left if old is not None else 0
        want = max(1, min(LEASE_MAX, lim.limit // LEASE_FRACTION))
        try:
            granted, remaining, wait_ms, reset_ms = await self._script(
                keys=[self._prefix + key], args=[-1, lim.period * 1000.0 / lim.limit, lim.limit, want, unspent])
        except BaseException:  # broad: an error or a cancel mid-call gave nothing back, so the lease stays ours
            if old is not None:
                self._leases[key] = old  # not given back: still ours to spend
            raise
        granted = int(granted)
        if granted < 1:
            return Decision(allowed=False, limit=lim.limit, remaining=int(remaining), reset_after=int(reset_ms) / 1000,
                            retry_after=int(wait_ms) / 1000)
        lease = _Lease(granted - 1, int(remaining), float(reset_ms), self._clock())
        if (other := self._leases.get(key)) is not None:  # taken meanwhile beside this one: keep both's tokens
            lease.left += other.left
        if lease.left > 0:
            self._leases[key] = lease
            if len(self._leases) > 100_000:  # bounded: forget the stale ones (their tokens come back with time)
                now = self._clock()
                self._leases = {k: v for k, v in self._leases.items() if now - v.taken_at < LEASE_SECONDS}
        t_ms = lim.period * 1000.0 / lim.limit
        return Decision(allowed=True, limit=lim.limit, remaining=lease.remaining + lease.left,
                        reset_after=max(0.0, lease.reset_ms - lease.left * t_ms) / 1000, retry_after=0)


def headers(decision: Decision) -> dict[str, str]:
    """IETF RateLimit-* headers (and the X-RateLimit-* twins); Retry-After when denied."""
    values = {
        "Limit": str(decision.limit),
        "Remaining": str(max(0, decision.remaining)),
        "Reset": str(max(0, math.ceil(decision.reset_after))),
    }
    out = {f"{p}RateLimit-{k}": v for k, v in values.items() for p in ("", "X-")}
    if not decision.allowed:
        out["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return out


class LocalLimiter:
    """The same GCRA in process memory: the fallback for routes that need no Redis to run (sync
    invoke, stream) while Redis is down. Limits then hold per process instead of per deployment."""

    def __init__(self, clock_ms: Callable[[], float] | None = None) -> None:
        self._tat: dict[str, float] = {}
        self._now = clock_ms or (lambda: time.monotonic() * 1000)

    def hit(self, key: str, lim: Limit, *, cost: int = 1) -> Decision:
        now = self._now()
        t = lim.period * 1000.0 / lim.limit
        burst = t * lim.limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + t * cost
        wait = new_tat - burst - now
        if wait > 0:
            return Decision(allowed=False, limit=lim.limit, remaining=0, reset_after=(tat - now) / 1000,
                            retry_after=wait / 1000)
        self._tat[key] = new_tat
        if len(self._tat) > 100_000:  # bounded: forget keys that are fully replenished
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return Decision(allowed=True, limit=lim.limit, remaining=int((burst - (new_tat - now)) // t),
                        reset_after=(new_tat - now) / 1000, retry_after=0)
