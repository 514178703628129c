"""One follower of the process's reader (tasks/hub.py): its position and its inbox, filled by the
reader and emptied by the follower's stream."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from agent_service.tasks.schemas import TaskEvent

Entry = tuple[str, TaskEvent]


def parse_id(event_id: str | bytes) -> tuple[int, int]:
    text = event_id.decode() if isinstance(event_id, bytes) else event_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class Follower:
    """One registered follower: its key, its position (the last id handed to it) and its inbox."""

    def __init__(self, key: str, after: str) -> None:
        self.key = key
        self.position = parse_id(after)
        self.inbox: deque[Entry] = deque()
        self.dropped = False
        self._waiter: asyncio.Future[None] | None = None

    async def next(self, wait: float) -> list[Entry]:
        """What arrived since the last call, waiting up to `wait` seconds for something; [] when
        nothing came or when the follower was dropped (see `dropped`)."""
        if not self.inbox and not self.dropped:
            # a bare future and one timer: this wait runs once per event per follower, and
            # asyncio.timeout's bookkeeping cost more than the rest of a delivery's Python
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(wait, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        batch = list(self.inbox)
        self.inbox.clear()
        return batch

    def _take(self, entries: Sequence[Entry], last: tuple[int, int]) -> None:
        self.inbox.extend(entries)
        self.position = last

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    def _drop(self) -> None:
        self.dropped = True
        self._wake()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
