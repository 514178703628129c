"""Per-worker heartbeats with counters, so the admin API can list the workers alive and readiness
can tell that at least one is.

arq's own health key is one per queue (workers overwrite each other), so each worker writes its
own hash, expiring when the worker stops beating, and refreshes one shared "a worker is alive"
key that readiness checks with a single EXISTS.
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import datetime
from typing import Any

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.metrics import WorkerStats
from agent_service.kit.redis import RedisConn, redis_guard
from agent_service.logging import get_logger

log = get_logger(__name__)


class WorkerBoard:
    def __init__(self, redis: RedisConn, *, prefix: str, queue_name: str) -> None:
        self._redis = redis
        self._base = f"{prefix}workers:{queue_name}:"

    @classmethod
    def of(cls, deps: Deps) -> WorkerBoard:
        return cls(deps.redis, prefix=deps.prefix, queue_name=deps.settings.queue_name)

    def _key(self, worker_id: str) -> str:
        return f"{self._base}w:{worker_id}"

    @property
    def any_key(self) -> str:
        return f"{self._base}any"

    @redis_guard
    async def beat(self, stats: WorkerStats, *, started_at: datetime, now: datetime, ttl: float) -> None:
        mapping: dict[str, Any] = {
            "worker_id": stats.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": started_at.isoformat(), "last_heartbeat": now.isoformat(), "running": stats.running,
            **{f"jobs_{k}": v for k, v in stats.counts.items()},
        }
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self._key(stats.worker_id), mapping=mapping)
        pipe.pexpire(self._key(stats.worker_id), int(ttl * 1000))
        pipe.set(self.any_key, stats.worker_id, px=int(ttl * 1000))
        await pipe.execute()

    @redis_guard
    async def remove(self, worker_id: str) -> None:
        await self._redis.delete(self._key(worker_id))

    async def someone_alive(self) -> bool:
        """Raises the driver's error when Redis cannot answer (readiness tells the two apart)."""
        return bool(await self._redis.exists(self.any_key))

    @redis_guard
    async def alive(self) -> list[dict[str, str]]:
        keys = [k async for k in self._redis.scan_iter(match=f"{self._base}w:*", count=200)]
        if not keys:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        rows = await pipe.execute()
        return [{a.decode(): b.decode() for a, b in row.items()} for row in rows if row]


async def heartbeat(deps: Deps, interval: float) -> None:
    """Beat every `interval` seconds until cancelled; a Redis outage only skips beats."""
    assert deps.stats is not None
    board = WorkerBoard.of(deps)
    started_at = deps.clock()
    failing = False
    while True:
        try:
            await board.beat(deps.stats, started_at=started_at, now=deps.clock(), ttl=interval * 3)
        except AppError:
            if not failing:  # the poll loop reports the outage; here a quiet note, once
                log.info("worker.heartbeat_failed")
            failing = True
        else:
            failing = False
        await asyncio.sleep(interval)
