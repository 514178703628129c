"""The Redis connection every process holds, and the translation of Redis outages into a 503 the
API can render (instead of a 500 with driver text).

The connection is arq's `ArqRedis` (a redis-py client that can also enqueue jobs); services only
see it under the name `RedisConn`. Key names are not made here: each domain names its own keys in
one module, under `settings.redis_key_prefix`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from agent_service.config import Settings
from agent_service.errors import ServiceUnavailable
from agent_service.kit import serializer
from agent_service.kit.resp import PackedConnection

RedisConn = ArqRedis

P = ParamSpec("P")
T = TypeVar("T")


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"


def redis_guard(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except RedisError:
            raise QueueUnavailable(
                "The job queue is unavailable right now; try again shortly.", headers={"Retry-After": "5"}
            ) from None
        except OSError:
            raise QueueUnavailable(
                "The job queue is unavailable right now; try again shortly.", headers={"Retry-After": "5"}
            ) from None

    return wrapper


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's settings for the same server (the worker's own pool)."""
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (run `python -m agent_service dev` for an embedded server)")
    return RedisSettings.from_dsn(settings.redis_url)


def connect(settings: Settings) -> RedisConn:
    """A lazily-connecting pool: the web process starts (and serves sync invokes) with Redis down."""
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set")
    # blocking reads (XREAD BLOCK of the event followers) pass their own, longer timeout
    # bounded: a burst of requests (1000 streams opening at once) waits for a connection, up to
    # REDIS_TIMEOUT, instead of opening one each (then a 503 like any Redis trouble)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=settings.redis_timeout, socket_timeout=settings.redis_timeout,
        health_check_interval=30, max_connections=settings.redis_max_connections, timeout=settings.redis_timeout,
        connection_class=PackedConnection,
    )
    return ArqRedis(
        pool,
        job_serializer=serializer.serialize,
        job_deserializer=serializer.deserialize,
        default_queue_name=settings.queue_name,
    )
