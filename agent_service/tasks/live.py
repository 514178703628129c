"""Live task state in Redis: progress, stream chunks and an append-only event stream per task.

Keys expire with the job result. The event stream (XADD) gives each event an id, so a
reader can resume after a given id without loss or duplication.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from agent_service.kit.redis import redis_guard

_json = msgspec.json.Encoder()


def live_key(task_id: str) -> str:
    return f"agent:task:{task_id}:live"


def chunks_key(task_id: str) -> str:
    return f"agent:task:{task_id}:chunks"


def events_key(task_id: str) -> str:
    return f"agent:task:{task_id}:events"


def result_key(task_id: str) -> str:
    return f"agent:task:{task_id}:result"


def cancel_key(task_id: str) -> str:
    return f"agent:task:{task_id}:cancel"


class TaskEvent(msgspec.Struct, kw_only=True):
    id: str  # the Redis stream id: "<ms>-<seq>", ordered, usable as Last-Event-ID
    type: str
    data: dict[str, Any]


_decode = msgspec.json.Decoder(dict[str, Any])


class TaskEvents:
    def __init__(self, redis: Redis, *, ttl: int) -> None:
        self._redis = redis
        self._ttl = ttl

    @redis_guard
    async def publish(self, task_id: str, kind: str, data: dict[str, Any], *, progress: int | None = None) -> None:
        pipe = self._redis.pipeline(transaction=False)
        if progress is not None:
            data = {**data, "progress": progress}
            pipe.hset(live_key(task_id), mapping={"progress": progress})
            pipe.expire(live_key(task_id), self._ttl)
        pipe.xadd(events_key(task_id), {"type": kind, "data": _json.encode(data)}, maxlen=100_000)
        pipe.expire(events_key(task_id), self._ttl)
        await pipe.execute()

    async def progress(self, task_id: str, value: int) -> None:
        await self.publish(task_id, "progress", {"progress": value}, progress=value)

    @redis_guard
    async def chunk(self, task_id: str, index: int, content: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(chunks_key(task_id), content)
        pipe.expire(chunks_key(task_id), self._ttl)
        pipe.xadd(
            events_key(task_id), {"type": "chunk", "data": _json.encode({"index": index, "content": content})},
            maxlen=100_000,
        )
        pipe.expire(events_key(task_id), self._ttl)
        await pipe.execute()

    @redis_guard
    async def reset_chunks(self, task_id: str) -> None:
        """A re-run (retry or re-delivery) starts its stream output afresh: overwrite, never duplicate."""
        await self._redis.delete(chunks_key(task_id))

    @redis_guard
    async def get_progress(self, task_id: str) -> int | None:
        raw = await self._redis.hget(live_key(task_id), "progress")  # type: ignore[misc]
        return int(raw) if raw is not None else None

    @redis_guard
    async def get_chunks(self, task_id: str) -> list[str]:
        raw: list[bytes] = await self._redis.lrange(chunks_key(task_id), 0, -1)  # type: ignore[misc]
        return [c.decode() for c in raw]

    @redis_guard
    async def request_cancel(self, task_id: str) -> None:
        await self._redis.set(cancel_key(task_id), b"1", ex=self._ttl)

    @redis_guard
    async def clear_cancel(self, task_id: str) -> None:
        await self._redis.delete(cancel_key(task_id))

    @redis_guard
    async def cancel_requested(self, task_id: str) -> bool:
        return bool(await self._redis.exists(cancel_key(task_id)))

    @redis_guard
    async def read(self, task_id: str, *, after: str = "0", block_ms: int | None = None,
                   count: int = 500) -> list[TaskEvent]:
        """Events with ids greater than `after`; with `block_ms`, wait that long for the first one."""
        key = events_key(task_id)
        if block_ms is None:
            raw = await self._redis.xrange(key, min=f"({after}" if after != "0" else "-", count=count)
            entries = raw
        else:
            res = await self._redis.xread({key: after}, count=count, block=block_ms)
            entries = res[0][1] if res else []
        return [
            TaskEvent(id=eid.decode(), type=fields[b"type"].decode(), data=_decode.decode(fields[b"data"]))
            for eid, fields in entries
        ]

    @redis_guard
    async def store_result(self, task_id: str, result: Any) -> None:
        """Kept before the task is marked finished, so no reader sees SUCCESS without its result."""
        await self._redis.set(result_key(task_id), _json.encode(result), ex=self._ttl)

    @redis_guard
    async def get_result(self, task_id: str) -> Any:
        raw = await self._redis.get(result_key(task_id))
        return None if raw is None else msgspec.json.decode(raw)

    @redis_guard
    async def reset(self, task_id: str) -> None:
        """Forget a finished run's live state (admin retry): its event history must not be replayed
        as if it were the new run's."""
        await self._redis.delete(events_key(task_id), chunks_key(task_id), live_key(task_id), result_key(task_id))

    @redis_guard
    async def get_progress_many(self, task_ids: list[str]) -> dict[str, int]:
        if not task_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hget(live_key(task_id), "progress")
        values = await pipe.execute()
        return {t: int(v) for t, v in zip(task_ids, values, strict=True) if v is not None}
