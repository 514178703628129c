"""Natural batching: calls made while a batch is being written are written together in the next.

The first call starts a batch at once (no timer, so an idle process adds no latency); calls that
arrive while it is in flight wait and go out together as soon as it is done. Under load each
batch carries about as many items as arrived during one write, so a store's per-statement or
per-round-trip cost is shared by them instead of paid by each: the group commit of databases.

`write(items)` returns, for each item in order, None (done) or the exception its caller gets; if
it raises, every item of the batch gets that exception (a copy each: a caller may add its own
headers to the error it raises, and those must not reach another request's answer). A caller
that is cancelled while waiting does not take its item back: it is written anyway (as an item
already sent would be).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
Write = Callable[[list[T]], Awaitable[Sequence[BaseException | None]]]


class Coalescer(Generic[T]):
    def __init__(self, write: Write[T], *, max_items: int = 128) -> None:
        self._write = write
        self._max = max_items
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._running = 0
        self.batches = 0  # written so far (tests and benchmarks read these)
        self.items = 0

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._running:  # one batch in flight at a time: the next one gathers meanwhile
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain(), name="coalesce")
        await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
                self.batches += 1
                self.items += len(batch)
                try:
                    outcomes = list(await self._write([item for item, _ in batch]))
                except BaseException as exc:  # cancelled too: no caller may wait forever
                    outcomes = [exc] * len(batch)
                    if not isinstance(exc, Exception):
                        self._settle(batch, outcomes)
                        raise
                self._settle(batch, outcomes)
        finally:
            self._running -= 1
            if self._waiting and not self._running:  # left by a cancelled drain: theirs fail rather than hang
                waiting, self._waiting = self._waiting, []
                self._settle(waiting, [asyncio.CancelledError()] * len(waiting))

    @staticmethod
    def _settle(batch: list[tuple[T, asyncio.Future[None]]], outcomes: Sequence[BaseException | None]) -> None:
        given: set[int] = set()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if outcome is None:
                future.set_result(None)
                continue
            if id(outcome) in given:
                outcome = copy.copy(outcome)
            given.add(id(outcome))
            future.set_exception(outcome)
