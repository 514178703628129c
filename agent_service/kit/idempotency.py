"""Idempotency-Key records in Redis, per principal, for 24 h, shared by every web process.

The first request claims the key atomically (SET NX) with the fingerprint of its body; a
replay with the same fingerprint gets the stored answer, a different body is a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from redis.asyncio import Redis

from agent_service.errors import AppError, Conflict
from agent_service.kit.redis import redis_guard
from agent_service.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T", bound=msgspec.Struct)

TTL_SECONDS = 24 * 3600
WAIT_FOR_FIRST = 3.0  # a concurrent duplicate waits this long for the first request to finish


class Stored(msgspec.Struct, kw_only=True):
    fingerprint: str
    status: int = 0  # 0 while the first request is still being processed
    body: dict[str, Any] | None = None


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Stored)


def fingerprint(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\x00")
    return h.hexdigest()


class IdempotencyStore:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int = TTL_SECONDS) -> None:
        self._prefix = f"{prefix}idem:"
        self._redis = redis
        self._ttl = ttl

    def _key(self, principal: str, key: str) -> str:
        return f"{self._prefix}{principal}:{hashlib.sha256(key.encode()).hexdigest()}"

    @redis_guard
    async def begin(self, principal: str, key: str, fp: str) -> Stored | None:
        """None: go ahead (the key is now ours). Stored: replay this answer. Conflict otherwise."""
        rkey = self._key(principal, key)
        if await self._redis.set(rkey, _enc.encode(Stored(fingerprint=fp)), nx=True, ex=self._ttl):
            return None
        deadline = asyncio.get_running_loop().time() + WAIT_FOR_FIRST
        while True:
            raw = await self._redis.get(rkey)
            if raw is None:  # the first request gave up: claim it again
                return await self.begin(principal, key, fp)
            stored = _dec.decode(raw)
            if stored.fingerprint != fp:
                raise Conflict("This Idempotency-Key was already used with a different request.",
                               code="idempotency_key_reused")
            if stored.status:
                return stored
            if asyncio.get_running_loop().time() > deadline:
                raise Conflict("A request with this Idempotency-Key is still being processed.",
                               code="idempotency_in_progress", headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)

    @redis_guard
    async def complete(self, principal: str, key: str, fp: str, status: int, body: dict[str, Any]) -> None:
        await self._redis.set(self._key(principal, key), _enc.encode(Stored(fingerprint=fp, status=status, body=body)),
                              ex=self._ttl)

    @redis_guard
    async def abandon(self, principal: str, key: str) -> None:
        await self._redis.delete(self._key(principal, key))

    async def once(self, principal: str, key: str, fp: str, work: Callable[[], Awaitable[T]], *,
                   answer: type[T], status: int = 202) -> tuple[T, bool]:
        """`work()` once per key: (its answer, False), or (the first request's answer, True) for a
        replay. Work that fails or is cancelled frees the key for the client's retry; once it is
        done the client hears its answer whatever Redis does next."""
        stored = await self.begin(principal, key, fp)
        if stored is not None:
            return msgspec.convert(stored.body, answer), True
        try:
            done = await work()
        except BaseException:  # broad: nothing was done, however it stopped (an error, a cancel): the key goes
            with contextlib.suppress(AppError):
                await self.abandon(principal, key)
            raise
        try:
            await self.complete(principal, key, fp, status, msgspec.to_builtins(done))
        except AppError:  # a retry with the key then waits out the claim and hears "still being processed"
            log.warning("idempotency.complete_failed", answer=answer.__name__)
        return done, False
