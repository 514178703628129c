"""How many live streams may be open at once: at most STREAM_MAX_PER_USER per user across every
web process, and STREAM_MAX_PER_PROCESS in this one. Any long-lived stream takes a slot before its
response starts and gives it back when it ends, whatever the transport (the SSE task followers
today; a WebSocket endpoint would `acquire`/`release` by user id the same way).

The per-user count is in Redis: a sorted set per user of slot ids scored by their expiry, which is
the opening time (Redis's clock, so processes with skewed clocks agree) + STREAM_MAX_SECONDS +
GRACE. One Lua script drops the expired members, counts and adds, atomically, so two processes
cannot both take the last slot. Release is a ZREM. A process that dies without releasing leaks
nothing for good: its slots expire by themselves, and since no stream lives past
STREAM_MAX_SECONDS an expired slot is never a live stream. The per-process count is in memory and
expires the same way, so a slot whose release was somehow missed cannot shrink the process for good.

Beyond either bound: 429 `too_many_streams` with Retry-After (when the oldest stream in the way
reaches its maximum lifetime, so a slot is certainly free then). Redis down: acquiring fails with a
503 (a live stream needs Redis anyway); releasing is best effort (the slot expires).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.exceptions import RedisError

from agent_service.errors import TooManyRequests
from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn, redis_guard
from agent_service.logging import get_logger

log = get_logger(__name__)

GRACE = 30.0  # seconds a slot outlives its stream's maximum lifetime: the end and its release may lag
CODE = "too_many_streams"

# KEYS[1]: the user's open streams. ARGV: slot id, limit, hold ms (lifetime + grace), grace ms.
# Returns {1, open} when taken, else {0, open, ms until the oldest reaches its lifetime end}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local open = redis.call('ZCARD', KEYS[1])
if open >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, open, math.floor(tonumber(oldest[2]) - tonumber(ARGV[4]) - now)}
end
local hold = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + hold, ARGV[1])
if redis.call('PTTL', KEYS[1]) < hold then
  redis.call('PEXPIRE', KEYS[1], hold)
end
return {1, open + 1, 0}
"""


@dataclass(frozen=True)
class Slot:
    id: str
    user_id: str


class StreamSlots:
    def __init__(self, redis: RedisConn, *, prefix: str, per_user: int, per_process: int, lifetime: float,
                 grace: float = GRACE, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._prefix = f"{prefix}streams:user:"
        self._take_script = redis.register_script(_TAKE)
        self.per_user, self.per_process = per_user, per_process
        self._hold = lifetime + grace
        self._grace = grace
        self._monotonic = monotonic
        self._local: dict[str, float] = {}  # slot id -> local expiry; insertion order is expiry order

    @classmethod
    def of(cls, deps: Deps) -> StreamSlots:
        """The process's slots (a Deps part)."""
        s = deps.settings
        return cls(deps.redis, prefix=deps.prefix, per_user=s.stream_max_per_user,
                   per_process=s.stream_max_per_process, lifetime=s.stream_max_seconds)

    @property
    def open(self) -> int:
        """Slots held in this process."""
        self._prune(self._monotonic())
        return len(self._local)

    def key(self, user_id: str) -> str:
        return f"{self._prefix}{user_id}"

    async def acquire(self, user_id: str) -> Slot:
        """A slot for one more stream of `user_id`; raises TooManyRequests beyond either bound
        (QueueUnavailable when Redis is down)."""
        now = self._monotonic()
        self._prune(now)
        if len(self._local) >= self.per_process:
            retry = _seconds(next(iter(self._local.values())) - self._grace - now)
            log.info("streams.rejected", bound="process", open=len(self._local))
            raise TooManyRequests(
                f"This server holds its maximum of {self.per_process} open streams; retry in {retry} s.",
                code=CODE, headers={"Retry-After": str(retry)})
        slot = Slot(uuid.uuid4().hex, user_id)
        self._local[slot.id] = now + self._hold  # before the await: concurrent acquires count it
        try:
            taken, open_, wait_ms = await self._take(slot)
        except BaseException:  # broad: whatever stops the take (a Redis error, a cancel), the reservation goes
            self._local.pop(slot.id, None)
            raise
        if not taken:
            self._local.pop(slot.id, None)
            retry = _seconds(wait_ms / 1000)
            log.info("streams.rejected", bound="user", open=open_)
            raise TooManyRequests(
                f"You have {open_} open streams, the most allowed per user ({self.per_user}); close one or "
                f"retry in {retry} s.", code=CODE, headers={"Retry-After": str(retry)})
        return slot

    async def release(self, slot: Slot) -> None:
        """Give the slot back (idempotent; never raises: a slot not released expires by itself)."""
        self._local.pop(slot.id, None)
        try:
            # shielded: a release that runs while its stream is being cancelled still happens
            await asyncio.shield(self._redis.zrem(self.key(slot.user_id), slot.id))
        except (RedisError, OSError):
            log.warning("streams.release_failed", slot=slot.id)

    @asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[Slot]:
        """A slot for the duration of a `with` block (a WebSocket handler's)."""
        slot = await self.acquire(user_id)
        try:
            yield slot
        finally:
            await self.release(slot)

    @redis_guard
    async def _take(self, slot: Slot) -> tuple[bool, int, int]:
        reply = await self._take_script(keys=[self.key(slot.user_id)],
                                        args=[slot.id, self.per_user, int(self._hold * 1000),
                                              int(self._grace * 1000)])
        return bool(reply[0]), int(reply[1]), int(reply[2])

    def _prune(self, now: float) -> None:
        while self._local:
            first, expiry = next(iter(self._local.items()))
            if expiry > now:
                return
            del self._local[first]
            log.warning("streams.slot_expired", slot=first)  # its release never came


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))
