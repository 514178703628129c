"""Per-worker heartbeats with counters, so the admin API can list workers alive.

arq's own health key is one per queue (workers overwrite each other), so each worker also
writes its own hash, expiring when the worker stops beating.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from agent_service.kit.redis import redis_guard

PREFIX = "agent:workers:"
COUNTERS = ("started", "succeeded", "failed", "retried", "cancelled", "deferred")


@dataclass
class WorkerStats:
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    running: int = 0

    def bump(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class WorkerBoard:
    def __init__(self, redis: Redis, *, queue_name: str) -> None:
        self._redis = redis
        self._queue = queue_name

    def _key(self, worker_id: str) -> str:
        return f"{PREFIX}{self._queue}:{worker_id}"

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
        await pipe.execute()

    @redis_guard
    async def remove(self, worker_id: str) -> None:
        await self._redis.delete(self._key(worker_id))

    @redis_guard
    async def alive(self) -> list[dict[str, str]]:
        keys = [k async for k in self._redis.scan_iter(match=f"{PREFIX}{self._queue}:*", count=200)]
        if not keys:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        rows = await pipe.execute()
        return [{a.decode(): b.decode() for a, b in row.items()} for row in rows if row]
