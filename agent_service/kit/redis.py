"""Translate Redis outages into a 503 the API can render, instead of a 500 with driver text."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from redis.exceptions import RedisError

from agent_service.errors import ServiceUnavailable

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
