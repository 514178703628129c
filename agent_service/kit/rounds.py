"""One round trip to Redis for the writes of several modules: a pipeline without MULTI (each
command stands alone, exactly as if sent by itself), to which each module adds its own commands
and from which it reads back its own replies.

A step of a job (it starts, it answered, it ended) touches keys of several modules — the task's
events, its run mark, the owner's slot, arq's lease — and sending each write by itself costs a
round trip each. Here each module keeps its key names and scripts to itself and adds them to the
step's `Round`; the step sends once.

Scripts go as EVAL, not EVALSHA: a pipeline cannot recover from NOSCRIPT (after a Redis restart)
without re-sending the commands that did run, and redis-py's own remedy checks SCRIPT EXISTS
first, which is one more round trip every time. Redis caches an EVAL'd script by its hash, so the
cost is the script's text on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from agent_service.kit.redis import redis_guard


class Reply:
    """A command's reply, readable once its round has been sent."""

    def __init__(self, rnd: Round, index: int) -> None:
        self._round = rnd
        self._index = index

    @property
    def value(self) -> Any:
        return self._round.replies[self._index]


class Round:
    def __init__(self, redis: Redis) -> None:
        self.pipe = redis.pipeline(transaction=False)
        self._replies: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.pipe.command_stack)

    def last(self) -> Reply:
        """The reply of the command added last."""
        return Reply(self, len(self) - 1)

    def script(self, source: str, keys: Sequence[str], args: Sequence[Any]) -> Reply:
        self.pipe.eval(source, len(keys), *keys, *args)
        return self.last()

    @property
    def replies(self) -> list[Any]:
        if self._replies is None:
            raise RuntimeError("the round has not been sent")
        return self._replies

    @redis_guard
    async def send(self) -> None:
        """Send every command (none: nothing sent); QueueUnavailable if Redis does not answer."""
        self._replies = await self.pipe.execute() if len(self) else []
