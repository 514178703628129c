"""Waiting for a task to end, on its event stream (no polling): for the protocol calls that answer
once a task has finished, or after a bound."""

from __future__ import annotations

import asyncio

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.tasks import service as tasks


async def until_end(deps: Deps, task_id: str, *, owner_id: str, is_admin: bool, seconds: float) -> None:
    """Return when the task has ended or `seconds` have passed, whichever is first. Without a stream
    to be had (the caller's streams are all open) it returns at once: the caller answers the task
    as it is."""
    if seconds <= 0:
        return
    try:
        events = await tasks.open_events(deps, task_id, owner_id=owner_id, is_admin=is_admin, last_event_id=None)
    except AppError:
        return
    try:
        async with asyncio.timeout(seconds):
            async for _ in events:
                pass
    except TimeoutError:
        pass
    finally:
        await events.aclose()
