"""Live task events for SSE: history first, then new events as they happen, ending with the task.

Events live in a Redis stream per task, so each has an ordered id; resuming after an id
(`Last-Event-ID`) replays exactly what came later — no loss, no duplicates. Each event carries
the attempt it belongs to (see tasks/schemas.py).

A follower reads the history on the shared pool (non-blocking pages), then registers with the
process's one reader (tasks/hub.py), which holds the only blocking connection. Its task's SQL row
is read once when it opens, and again only after a long silence (the finish event is on the
stream; the row covers a finish whose event never got there). Every follower holds a stream slot
(kit/stream_slots.py), taken before the response starts and given back when it ends, and ends
after STREAM_MAX_SECONDS with a `reconnect` event that names the id to resume after.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Literal, cast

import msgspec

from agent_service.errors import ValidationFailed
from agent_service.kit.deps import Deps
from agent_service.kit.sse import Item
from agent_service.kit.stream_slots import StreamSlots
from agent_service.tasks import lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks import service as task_service  # the module: service.open_events is this one's
from agent_service.tasks.hub import FollowerHub
from agent_service.tasks.schemas import FINISHED_STATES, StateEvent, TaskEvent, TaskState

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
PAGE = 500  # history entries per read
KEEPALIVE_SECONDS = 5.0
SILENCE_CHECK_SECONDS = 30.0  # this long without an event: read the task's row once more


class ReconnectEvent(msgspec.Struct, kw_only=True, tag="reconnect", tag_field="type"):
    """The last event of a stream that ends before its task: it reached STREAM_MAX_SECONDS
    (`max_lifetime`) or the server let it go (`dropped`: shutting down, or the client reads too
    slowly). Reconnect with `Last-Event-ID: <last_event_id>` (what an EventSource does by itself:
    this event has no `id`) to get every later event, none twice. `last_event_id` is null when no
    event was sent yet: reconnect without the header."""

    last_event_id: str | None
    reason: Literal["max_lifetime", "dropped"]


def valid_event_id(value: str) -> bool:
    """A Redis stream id: two unsigned 64-bit numbers (Redis refuses anything larger)."""
    return bool(_EVENT_ID.match(value)) and all(int(part) < 2**64 for part in value.split("-"))


def is_end(event: TaskEvent) -> bool:
    return isinstance(event, StateEvent) and event.state in FINISHED_STATES


class EventStream(AsyncIterator[Item]):
    """A follower's items. Closing it ends the follow and gives its slot back, even if it never
    started (the SSE response closes it however it ends)."""

    def __init__(self, items: AsyncGenerator[Item, None], release: Callable[[], Awaitable[None]]) -> None:
        self._items = items
        self._release: Callable[[], Awaitable[None]] | None = release

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Item:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        try:
            await self._items.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                await release()


async def open_events(
    deps: Deps, task_id: str, *, owner_id: str, is_admin: bool, last_event_id: str | None
) -> EventStream:
    """Check access, the resume point and the caller's stream slots now (so errors are plain HTTP
    errors), then stream. The iterator yields a keep-alive item while nothing happens."""
    if last_event_id is not None and not valid_event_id(last_event_id):
        raise ValidationFailed("Last-Event-ID is not an event id of this stream.",
                               errors=[{"path": "header.Last-Event-ID", "message": "Expected `<ms>-<seq>`"}])
    record = await task_service.get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    slots = deps.part(StreamSlots.of)
    slot = await slots.acquire(owner_id)
    deadline = asyncio.get_running_loop().time() + deps.settings.stream_max_seconds

    async def release() -> None:
        await slots.release(slot)

    return EventStream(_follow(deps, task_id, last_event_id or "0", record.state, deadline), release)


def follow_items(deps: Deps, task_id: str, *, after: str, state: str, deadline: float) -> AsyncGenerator[Item, None]:
    """The items of `open_events` without its checks or a slot of its own: for a caller that did
    both (a WebSocket subscription, whose connection holds the slot)."""
    return _follow(deps, task_id, after, state, deadline)


def _closing(state: str | None) -> Item:
    # finished, and everything after the last id was already sent (or expired): a closing state
    # event without an id, so a reconnect still resumes from the last real one
    final = cast(TaskState, state or "FAILURE")
    return Item(StateEvent(state=final, progress=lifecycle.progress_of(final, None), final=True))


def _reconnect(after: str, reason: Literal["max_lifetime", "dropped"]) -> Item:
    return Item(ReconnectEvent(last_event_id=None if after == "0" else after, reason=reason))


async def _follow(deps: Deps, task_id: str, after: str, state: str, deadline: float) -> AsyncGenerator[Item, None]:
    live = lifecycle.live(deps)
    loop = asyncio.get_running_loop()
    while True:  # the history, in pages
        page = await live.read(task_id, after=after, count=PAGE)
        for eid, event in page:
            yield Item(event, eid)
            after = eid
            if is_end(event):
                return
        if len(page) < PAGE:
            break
    if state in FINISHED_STATES:  # the row was read before the history: all of it is in there
        yield _closing(state)
        return
    hub = deps.part(FollowerHub.of)
    follower = hub.subscribe(live.events_key(task_id), after)
    try:
        quiet_since = loop.time()
        while True:
            left = deadline - loop.time()
            if left <= 0:
                yield _reconnect(after, "max_lifetime")
                return
            batch = await follower.next(min(KEEPALIVE_SECONDS, left))
            for eid, event in batch:
                yield Item(event, eid)
                after = eid
                if is_end(event):
                    return
            if batch:
                quiet_since = loop.time()
                continue
            if follower.dropped:
                yield _reconnect(after, "dropped")
                return
            if loop.time() - quiet_since >= SILENCE_CHECK_SECONDS:
                quiet_since = loop.time()
                record = await task_store.get(deps.db, task_id)
                if record is None or record.state in FINISHED_STATES:
                    for eid, event in await live.read(task_id, after=after):
                        yield Item(event, eid)
                        if is_end(event):
                            return
                    yield _closing(record.state if record else None)
                    return
            yield Item(None)
    finally:
        hub.unsubscribe(follower)
