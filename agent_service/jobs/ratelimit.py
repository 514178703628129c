"""GCRA rate limiting shared by every process: one Lua script, one atomic Redis round trip per check.

GCRA ("generic cell rate algorithm") keeps one number per bucket, the theoretical arrival time
(TAT). With the emission interval T = period / limit and the burst tolerance tau = limit * T, a
request of `cost` is allowed when `max(TAT, now) + cost * T - tau <= now`; if so TAT moves on by
`cost * T`. A fresh bucket therefore admits exactly `limit` requests at once, then one every T.

* Time is the Redis server's TIME, read inside the script, so web processes and workers whose
  clocks disagree still share one timeline. Tests may pass `now` instead (never production code).
* Everything is integer microseconds (T is rounded to a whole microsecond, at least 1), so the
  comparison is exact: no float drift can admit `limit + 1` or only `limit - 1`.
* A bucket key expires by itself when its TAT passes (SET ... PX), i.e. once it is full again.
* `hit_all` checks several buckets in the same script and charges them all or none: a request
  denied by one bucket never uses up a token in another (used for job limits: per function + global).
* Redis down -> `RateLimiterUnavailable` (a `QueueUnavailable`, i.e. a 503 the API can render);
  the caller chooses fail-open or fail-closed, or uses `hit_or`, which logs the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.exceptions import RedisError

from agent_service.jobs.guard import QueueUnavailable
from agent_service.logging import get_logger

# KEYS: the buckets. ARGV: now_us (-1: Redis TIME), cost, dry_run (1: do not charge),
# then per bucket: emission interval T in whole microseconds, limit.
# Returns {allowed, limit, remaining, reset_after_us, retry_after_us} of the binding bucket: the
# one that waits longest when denied, else the one with the fewest tokens left.
_GCRA_LUA = """
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
local dry = ARGV[3] == '1'
local allowed = 1
local b_limit, b_remaining, b_reset, b_wait = 0, 0, 0, nil
local new_tats = {}
for i = 1, #KEYS do
  local t_us = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  local tau = t_us * limit
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat = tat + t_us * cost
  local wait = new_tat - tau - now
  local remaining, reset
  if wait > 0 then
    allowed = 0
    remaining = math.floor((tau - (tat - now)) / t_us)
    reset = tat - now
  else
    remaining = math.floor((tau - (new_tat - now)) / t_us)
    reset = new_tat - now
  end
  new_tats[i] = new_tat
  if b_wait == nil or (wait > 0 and wait > b_wait) or (wait <= 0 and b_wait <= 0 and remaining < b_remaining) then
    b_limit, b_remaining, b_reset, b_wait = limit, remaining, reset, wait
  end
end
if allowed == 1 and not dry then
  for i = 1, #KEYS do
    local ttl_ms = math.max(1, math.ceil((new_tats[i] - now) / 1000))
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
  end
end
local retry = 0
if allowed == 0 then retry = b_wait end
return {allowed, b_limit, b_remaining, b_reset, retry}
"""

_US = 1_000_000


class RateLimiterUnavailable(QueueUnavailable):
    """Redis could not be reached for a rate-limit check (503 if the caller lets it through)."""

    code = "rate_limiter_unavailable"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    limit: int
    remaining: int  # requests still allowed right now (after this one, if it was allowed)
    reset_after: float  # seconds until the bucket is full again (RateLimit-Reset)
    retry_after: float  # seconds until this request would be allowed; 0 when allowed
    degraded: bool = False  # True: Redis was down and `hit_or` failed open; the numbers are not real


class Check(msgspec.Struct, frozen=True):
    """One bucket of a `hit_all`: `limit` requests per `period` seconds under `key`."""

    key: str
    limit: int
    period: float = 60.0


def _interval_us(limit: int, period: float) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if not period > 0:
        raise ValueError(f"period must be positive, not {period}")
    return max(1, round(period * _US / limit))


class RateLimiter:
    """GCRA over Redis. `redis` is a `redis.asyncio.Redis` (or ArqRedis); give it socket timeouts
    (`socket_timeout`, `socket_connect_timeout`) so a hung Redis cannot stall requests."""

    def __init__(self, redis: Any, prefix: str = "rl:") -> None:
        self._prefix = prefix
        # register_script: EVALSHA, and on NOSCRIPT (Redis restarted, SCRIPT FLUSH) EVAL once more
        self._script = redis.register_script(_GCRA_LUA)

    async def hit(self, key: str, limit: int, period: float, cost: int = 1, *, now: float | None = None) -> Decision:
        """Charge `cost` to the bucket `key` (`limit` per `period` seconds) if it has room."""
        return await self._run([Check(key, limit, period)], cost, dry_run=False, now=now)

    async def peek(self, key: str, limit: int, period: float, cost: int = 1, *, now: float | None = None) -> Decision:
        """What `hit` would answer, without charging anything."""
        return await self._run([Check(key, limit, period)], cost, dry_run=True, now=now)

    async def hit_all(self, checks: Sequence[Check], cost: int = 1, *, now: float | None = None) -> Decision:
        """Charge every bucket or none, atomically. The Decision is the binding bucket's: the one
        that waits longest when denied, else the one with the fewest tokens left.

        All keys go to one script, so on Redis Cluster they must share a hash slot (use a `{tag}`)."""
        if not checks:
            raise ValueError("hit_all needs at least one bucket")
        return await self._run(checks, cost, dry_run=False, now=now)

    async def hit_or(self, key: str, limit: int, period: float, cost: int = 1, *, fail_open: bool,
                     now: float | None = None) -> Decision:
        """`hit`, deciding what a Redis outage means: fail open (allowed, `degraded=True`, logged) or
        fail closed (logged, `RateLimiterUnavailable` raised)."""
        try:
            return await self.hit(key, limit, period, cost, now=now)
        except RateLimiterUnavailable:
            mode = "open" if fail_open else "closed"
            # a fresh logger each time: this path is rare and must log under the current configuration
            get_logger(__name__).warning(f"rate limiter unavailable, failing {mode}", bucket=key, failing=mode)
            if not fail_open:
                raise
            return Decision(allowed=True, limit=limit, remaining=limit, reset_after=0.0, retry_after=0.0,
                            degraded=True)

    async def _run(self, checks: Sequence[Check], cost: int, *, dry_run: bool, now: float | None) -> Decision:
        if cost < 1:
            raise ValueError(f"cost must be at least 1, not {cost}")
        args: list[int] = [-1 if now is None else round(now * _US), cost, int(dry_run)]
        for c in checks:
            if cost > c.limit:
                raise ValueError(f"cost {cost} can never fit in a bucket of {c.limit}")
            args += [_interval_us(c.limit, c.period), c.limit]
        keys = [self._prefix + c.key for c in checks]
        try:
            allowed, limit, remaining, reset_us, retry_us = await self._script(keys=keys, args=args)
        except (RedisError, OSError):
            raise RateLimiterUnavailable(
                "Rate limiting is unavailable right now; try again shortly.", headers={"Retry-After": "5"}
            ) from None
        return Decision(allowed=bool(allowed), limit=int(limit), remaining=max(0, int(remaining)),
                        reset_after=int(reset_us) / _US, retry_after=int(retry_us) / _US)


def headers(decision: Decision) -> dict[str, str]:
    """`RateLimit-Limit/Remaining/Reset` (integer seconds, rounded up) and their `X-RateLimit-*`
    twins, plus `Retry-After` (whole seconds, at least 1) when denied. A degraded (fail-open)
    decision gets no headers: the service does not know the real numbers."""
    if decision.degraded:
        return {}
    values = {
        "Limit": str(decision.limit),
        "Remaining": str(max(0, decision.remaining)),
        "Reset": str(max(0, math.ceil(decision.reset_after))),
    }
    out = {f"{prefix}RateLimit-{name}": v for prefix in ("", "X-") for name, v in values.items()}
    if not decision.allowed:
        out["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return out
