"""The rows behind credentials (API keys by hash, users by id), kept in process memory for at most
AUTH_CACHE_TTL seconds, so that an authenticated request reads no SQL.

Staleness is bounded three ways:
- whoever changes a key or a user through the service calls `invalidate_key` / `invalidate_user`
  once the change is committed: the entry leaves this process at once, and a message on the Redis
  channel `<prefix>auth:invalidate` takes it out of every other web process (milliseconds);
- an entry expires after AUTH_CACHE_TTL (1 s by default), which alone bounds a change made any
  other way (SQL by hand, a lost message);
- entries are kept only while this process is subscribed to the channel: a lost subscription
  empties the cache, and until it is back every lookup reads SQL.
A lookup that began before an invalidation never stores what it read (it may be the old row):
every invalidation bumps `generation`, and a row is only stored under the generation it was read in.

Only rows that exist are kept: an unknown key is looked up again each time, so a key minted on
another machine works at once. Revocation of access tokens (logout) is not cached at all: it is
one Redis lookup per request (tokens.py), so a signed-out token fails everywhere at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from redis.exceptions import RedisError

from agent_service.errors import AppError
from agent_service.identity import repository as repo
from agent_service.identity.repository import ApiKeyRecord, UserRecord
from agent_service.kit.deps import Deps
from agent_service.kit.redis import RedisConn
from agent_service.logging import get_logger

log = get_logger(__name__)
MAX_ENTRIES = 10_000  # per table; past it the oldest entries go
RETRY_MAX_SECONDS = 5.0  # the longest wait between two attempts to subscribe again
R = TypeVar("R")


def channel(prefix: str) -> str:
    return f"{prefix}auth:invalidate"


class _Table(Generic[R]):
    """id -> (stored at, row), in insertion order; a read checks the age."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[float, R]] = {}

    def get(self, key: str, now: float, ttl: float) -> R | None:
        found = self.rows.get(key)
        if found is None:
            return None
        if now - found[0] >= ttl:
            del self.rows[key]
            return None
        return found[1]

    def put(self, key: str, row: R, now: float) -> None:
        self.rows.pop(key, None)
        self.rows[key] = (now, row)
        while len(self.rows) > MAX_ENTRIES:
            del self.rows[next(iter(self.rows))]


class AuthCache:
    def __init__(self, redis: RedisConn, *, prefix: str, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self.channel = channel(prefix)
        self._ttl = ttl
        self._clock = clock
        self._keys: _Table[ApiKeyRecord] = _Table()  # by key hash
        self._users: _Table[UserRecord] = _Table()  # by user id
        self._touched: dict[str, float] = {}  # key id -> when this process last wrote its last_used_at
        self._reads: dict[str, asyncio.Future[Any]] = {}  # lookups under way (`once`)
        self.generation = 0
        self.live = False  # subscribed: rows may be kept
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def of(cls, deps: Deps) -> AuthCache:
        cache = cls(deps.redis, prefix=deps.prefix, ttl=deps.settings.auth_cache_ttl)
        deps.on_close(cache.aclose)
        return cache

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    def start(self) -> None:
        """Subscribe in the background (idempotent; from inside the running loop)."""
        if self._task is None and self.enabled and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="auth-cache-invalidation")

    def key(self, key_hash: str) -> ApiKeyRecord | None:
        return self._keys.get(key_hash, self._clock(), self._ttl) if self.live else None

    def user(self, user_id: str) -> UserRecord | None:
        return self._users.get(user_id, self._clock(), self._ttl) if self.live else None

    def put_key(self, key_hash: str, row: ApiKeyRecord, generation: int) -> None:
        if self.live and generation == self.generation:
            self._keys.put(key_hash, row, self._clock())

    def put_user(self, row: UserRecord, generation: int) -> None:
        if self.live and generation == self.generation:
            self._users.put(row.id, row, self._clock())

    async def once(self, name: str, read: Callable[[], Awaitable[R]]) -> R:
        """`read()`, shared by the lookups of `name` that ask while it runs: when an entry expires
        under load, one SELECT refills it instead of one per waiting request."""
        running = self._reads.get(name)
        if running is None:
            running = self._reads[name] = asyncio.ensure_future(read())
            running.add_done_callback(lambda done: self._finished(name, done))
        try:
            result: R = await asyncio.shield(running)
        except AppError as exc:  # each waiter its own copy: a caller may add headers to what it raises
            raise copy.copy(exc) from None
        return result

    def _finished(self, name: str, done: asyncio.Future[Any]) -> None:
        self._reads.pop(name, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: its waiters may all have gone (cancelled requests)

    def should_touch(self, key_id: str, every_seconds: float) -> bool:
        """Whether this process should record the key's use now (then it counts as recorded)."""
        now = self._clock()
        last = self._touched.get(key_id)
        if last is not None and now - last < every_seconds:
            return False
        if len(self._touched) >= MAX_ENTRIES:
            self._touched.clear()
        self._touched[key_id] = now
        return True

    def drop(self, message: str) -> None:
        """Apply one invalidation: `k:<key id>`, `u:<user id>` or `*` (everything)."""
        self.generation += 1
        kind, _, ident = message.partition(":")
        if kind == "k":
            for key_hash, (_, row) in list(self._keys.rows.items()):
                if row.id == ident:
                    del self._keys.rows[key_hash]
        elif kind == "u":
            self._users.rows.pop(ident, None)
        else:
            self._clear()

    def _clear(self) -> None:
        self.generation += 1
        self._keys.rows.clear()
        self._users.rows.clear()

    async def publish(self, message: str) -> None:
        """Tell every web process; best effort (the TTL bounds what a lost message leaves behind)."""
        self.drop(message)
        try:
            await self._redis.publish(self.channel, message)
        except (RedisError, OSError) as exc:
            log.warning("auth_cache.publish_failed", error=type(exc).__name__)

    async def _listen(self) -> None:
        delay = 0.1
        while not self._closed:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while not self._closed:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._clear()  # anything kept before may have missed messages
                        self.live = True
                        delay = 0.1
                        log.info("auth_cache.live", ttl=self._ttl)
                    elif message["type"] == "message":
                        data = message["data"]
                        self.drop(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError) as exc:
                if self.live:
                    log.warning("auth_cache.unsubscribed", error=type(exc).__name__)
            finally:
                self.live = False
                self._clear()
                with contextlib.suppress(RedisError, OSError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def aclose(self) -> None:
        self._closed = True
        self.live = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def cache(deps: Deps) -> AuthCache:
    found = deps.part(AuthCache.of)
    found.start()
    return found


async def key_by_hash(deps: Deps, key_hash: str) -> ApiKeyRecord | None:
    c = cache(deps)
    if (hit := c.key(key_hash)) is not None:
        return hit

    async def read() -> ApiKeyRecord | None:
        generation = c.generation
        row = await repo.key_by_hash(deps.db, key_hash)
        if row is not None:
            c.put_key(key_hash, row, generation)
        return row

    return await c.once("k" + key_hash, read)


async def get_user(deps: Deps, user_id: str) -> UserRecord | None:
    c = cache(deps)
    if (hit := c.user(user_id)) is not None:
        return hit

    async def read() -> UserRecord | None:
        generation = c.generation
        row = await repo.get_user(deps.db, user_id)
        if row is not None:
            c.put_user(row, generation)
        return row

    return await c.once("u" + user_id, read)


async def invalidate_key(deps: Deps, key_id: str) -> None:
    """After a key's row changed (revoked, rotated): no web process uses the old row again."""
    await deps.part(AuthCache.of).publish(f"k:{key_id}")


async def invalidate_user(deps: Deps, user_id: str) -> None:
    """After a user's row changed (deactivated, roles or tier changed)."""
    await deps.part(AuthCache.of).publish(f"u:{user_id}")
