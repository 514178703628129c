"""The process's shared machinery, built once (web lifespan or worker start-up) and passed to services.

It holds only what knows no domain: settings, the database, Redis, an HTTP client, time,
randomness, the rate limiter and the metrics sink. A domain keeps its own process-wide objects
(the agent registry, the task event store, the audit writer, …) as *parts*: `deps.part(make)`
builds one with `make(deps)` on first use and returns the same object afterwards, so `kit` never
imports a domain and a domain never reaches into another's internals.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from agent_service.clock import Clock, utcnow
from agent_service.config import Settings
from agent_service.errors import ConfigError
from agent_service.kit.db import Database, DatabaseUnavailable, check_database_url
from agent_service.kit.db_postgres import PostgresDatabase
from agent_service.kit.db_sqlite import SqliteDatabase
from agent_service.kit.metrics import JobMetrics, WorkerStats
from agent_service.kit.migrations import migrate
from agent_service.kit.ratelimit import RateLimiter
from agent_service.kit.redis import RedisConn, connect
from agent_service.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")
Closer = Callable[[], Awaitable[None]]


@dataclass
class Deps:
    settings: Settings
    db: Database
    redis: RedisConn
    http: httpx.AsyncClient
    clock: Clock = utcnow
    rng: Callable[[], float] = field(default=random.random)
    limiter: RateLimiter | None = None
    metrics: JobMetrics | None = None
    stats: WorkerStats | None = None  # set in worker processes
    _parts: dict[Any, Any] = field(default_factory=dict)
    _closers: list[Closer] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """Every Redis key the project owns starts with this (REDIS_KEY_PREFIX)."""
        return self.settings.redis_key_prefix

    def part(self, make: Callable[[Deps], T]) -> T:
        """The process-wide object `make` builds (built on first use, then shared)."""
        try:
            value: T = self._parts[make]
        except KeyError:
            value = self._parts[make] = make(self)
        return value

    def provide(self, make: Callable[[Deps], T], value: T) -> None:
        """Use `value` as the part `make` would build (entry points and tests)."""
        self._parts[make] = value

    def on_close(self, closer: Closer) -> None:
        """Run `closer` when the process shuts down, before the stores close (last added runs first)."""
        self._closers.append(closer)

    async def aclose(self, *, close_redis: bool = True) -> None:
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()
        await self.http.aclose()
        if close_redis:
            await self.redis.aclose()
        await self.db.close()


async def open_database(settings: Settings) -> Database:
    """PostgreSQL when DATABASE_URL is set, else the SQLite file at DATABASE_PATH."""
    if settings.database_url:
        return await PostgresDatabase.open(
            check_database_url(settings.database_url), min_size=settings.db_pool_min,
            max_size=settings.db_pool_max, acquire_timeout=settings.db_acquire_timeout,
            command_timeout=settings.db_command_timeout,
        )
    return await SqliteDatabase.open(settings.database_path, busy_timeout_ms=settings.db_busy_timeout_ms)


async def open_migrated(settings: Settings) -> tuple[Database, list[str]]:
    """The database, migrated, and the migrations this call applied. A server still starting (or
    briefly away) is waited for, up to DB_START_TIMEOUT; then a ConfigError names DATABASE_URL's
    host, never a driver traceback."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.db_start_timeout
    while True:
        try:
            db = await open_database(settings)
            try:
                applied = await migrate(db)
            except BaseException:  # any failure (or cancel) mid-migration: no pool left open, then raise
                await db.close()
                raise
            return db, applied
        except DatabaseUnavailable:
            if loop.time() >= deadline:
                where = urlsplit(settings.database_url or "").netloc.rpartition("@")[2] or settings.database_path
                raise ConfigError(f"cannot reach the database (DATABASE_URL host {where}) after "
                                  f"{settings.db_start_timeout:g} s") from None
            log.warning("db.waiting_at_start")
            await asyncio.sleep(1.0)


async def open_deps(settings: Settings, *, redis: RedisConn | None = None, clock: Clock = utcnow) -> Deps:
    db, _ = await open_migrated(settings)
    redis = redis if redis is not None else connect(settings)
    return Deps(
        settings=settings,
        db=db,
        redis=redis,
        http=httpx.AsyncClient(timeout=settings.llm_timeout),
        clock=clock,
        limiter=RateLimiter(redis, prefix=f"{settings.redis_key_prefix}rl:"),
        metrics=JobMetrics(redis, prefix=settings.redis_key_prefix),
    )
