"""Readiness: Redis answers, the database answers, and a worker has sent a fresh heartbeat."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from agent_service.kit.db import DatabaseUnavailable
from agent_service.kit.deps import Deps
from agent_service.ops.schemas import Health, HealthComponent
from agent_service.ops.workers import WorkerBoard

PROBE_TIMEOUT = 2.0


async def _redis(deps: Deps) -> HealthComponent:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await deps.redis.ping()
    except (RedisError, OSError, TimeoutError):
        return HealthComponent(ok=False, detail="redis unreachable")
    return HealthComponent(ok=True)


async def _database(deps: Deps) -> HealthComponent:
    """Answers, and can be written: a locked or full SQLite file, or a read-only server, is not ready."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await deps.db.ping(write=True)
    except (DatabaseUnavailable, TimeoutError):
        return HealthComponent(ok=False, detail="database unavailable")
    return HealthComponent(ok=True)


async def _worker(deps: Deps) -> HealthComponent:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            alive = await WorkerBoard.of(deps).someone_alive()
    except (RedisError, OSError, TimeoutError):
        return HealthComponent(ok=False, detail="worker heartbeat unknown (redis unreachable)")
    return HealthComponent(ok=True) if alive else HealthComponent(ok=False, detail="no fresh worker heartbeat")


async def readiness(deps: Deps) -> Health:
    redis, db, worker = await asyncio.gather(_redis(deps), _database(deps), _worker(deps))
    components = {"redis": redis, "database": db, "worker": worker}
    ok = all(c.ok for c in components.values())
    return Health(status="ok" if ok else "unavailable", components=components)
