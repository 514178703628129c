"""Live task events for SSE: history first, then new events as they happen, ending with the task.

Events live in a Redis stream per task, so each has an ordered id; resuming after an id
(`Last-Event-ID`) replays exactly what came later — no loss, no duplicates. Each event carries
the attempt it belongs to (see tasks/schemas.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from agent_service.errors import ValidationFailed
from agent_service.kit.deps import Deps
from agent_service.kit.sse import Item
from agent_service.tasks import lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks.schemas import FINISHED_STATES, StateEvent, TaskEvent
from agent_service.tasks.service import get_record

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
BLOCK_MS = 5_000


def _block_ms(deps: Deps) -> int:
    # a blocking read must return before the connection's own timeout (REDIS_TIMEOUT) fires
    return int(min(BLOCK_MS / 1000, max(0.2, deps.settings.redis_timeout - 0.5)) * 1000)


def valid_event_id(value: str) -> bool:
    """A Redis stream id: two unsigned 64-bit numbers (Redis refuses anything larger)."""
    return bool(_EVENT_ID.match(value)) and all(int(part) < 2**64 for part in value.split("-"))


def is_end(event: TaskEvent) -> bool:
    return isinstance(event, StateEvent) and event.state in FINISHED_STATES


async def open_events(
    deps: Deps, task_id: str, *, owner_id: str, is_admin: bool, last_event_id: str | None
) -> AsyncIterator[Item]:
    """Check access and the resume point now (so errors are plain HTTP errors), then stream.
    The iterator yields a keep-alive item while nothing happens."""
    if last_event_id is not None and not valid_event_id(last_event_id):
        raise ValidationFailed("Last-Event-ID is not an event id of this stream.",
                               errors=[{"path": "header.Last-Event-ID", "message": "Expected `<ms>-<seq>`"}])
    await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    return _follow(deps, task_id, last_event_id or "0")


async def _follow(deps: Deps, task_id: str, after: str) -> AsyncIterator[Item]:
    live = lifecycle.live(deps)
    backlog = await live.read(task_id, after=after)
    for eid, event in backlog:
        yield Item(event, eid)
        after = eid
        if is_end(event):
            return
    while True:
        record = await task_store.get(deps.db, task_id)
        if record is None or record.state in FINISHED_STATES:
            # finished, and everything after `after` was already sent (or expired): a closing
            # state event without an id, so a reconnect still resumes from the last real one
            for eid, event in await live.read(task_id, after=after):
                yield Item(event, eid)
                if is_end(event):
                    return
            state = record.state if record else "FAILURE"
            yield Item(StateEvent(state=state, progress=lifecycle.progress_of(state, None), final=True))  # type: ignore[arg-type]
            return
        events = await live.read(task_id, after=after, block_ms=_block_ms(deps))
        if not events:
            yield Item(None)
            continue
        for eid, event in events:
            yield Item(event, eid)
            after = eid
            if is_end(event):
                return
