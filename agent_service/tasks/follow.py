"""Live task events for SSE: history first, then new events as they happen, ending with the task.

Events live in a Redis stream per task, so each has an ordered id; resuming after an id
(`Last-Event-ID`) replays exactly what came later — no loss, no duplicates.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from agent_service.errors import ValidationFailed
from agent_service.kit.deps import Deps
from agent_service.tasks import repository as task_store
from agent_service.tasks.live import TaskEvent
from agent_service.tasks.schemas import FINISHED_STATES
from agent_service.tasks.service import get_record

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
BLOCK_MS = 5_000


def _valid_event_id(value: str) -> bool:
    """A Redis stream id: two unsigned 64-bit numbers (Redis refuses anything larger)."""
    return bool(_EVENT_ID.match(value)) and all(int(part) < 2**64 for part in value.split("-"))


def _is_end(event: TaskEvent) -> bool:
    return event.type == "state" and event.data.get("state") in FINISHED_STATES


async def open_events(
    deps: Deps, task_id: str, *, owner_id: str, is_admin: bool, last_event_id: str | None
) -> AsyncIterator[TaskEvent | None]:
    """Check access and the resume point now (so errors are plain HTTP errors), then stream.
    The iterator yields None as a keep-alive while nothing happens."""
    if last_event_id is not None and not _valid_event_id(last_event_id):
        raise ValidationFailed("Last-Event-ID is not an event id of this stream.",
                               errors=[{"path": "header.Last-Event-ID", "message": "Expected `<ms>-<seq>`"}])
    await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    return _follow(deps, task_id, last_event_id or "0")


async def _follow(deps: Deps, task_id: str, after: str) -> AsyncIterator[TaskEvent | None]:
    backlog = await deps.events.read(task_id, after=after)
    for event in backlog:
        yield event
        after = event.id
        if _is_end(event):
            return
    while True:
        record = await task_store.get(deps.db, task_id)
        if record is None or record.state in FINISHED_STATES:
            # finished, and everything after `after` was already sent (or expired): a closing
            # state event without an id, so a reconnect still resumes from the last real one
            if not backlog or not _is_end(backlog[-1]):
                late = await deps.events.read(task_id, after=after)
                for event in late:
                    yield event
                    if _is_end(event):
                        return
                yield TaskEvent(id="", type="state",
                                data={"state": record.state if record else "FAILURE", "final": True})
            return
        events = await deps.events.read(task_id, after=after, block_ms=BLOCK_MS)
        if not events:
            yield None
            continue
        for event in events:
            yield event
            after = event.id
            if _is_end(event):
                return
        backlog = events
