"""Task status: the durable SQL record joined with live progress and the kept result in Redis."""

from __future__ import annotations

from typing import Any

import msgspec

from agent_service.errors import NotFound
from agent_service.schemas.tasks import STATUS_WORDS, JobResult, TaskStatus
from agent_service.services.deps import Deps
from agent_service.storage import tasks as task_store
from agent_service.storage.tasks import TaskRecord


async def get_record(deps: Deps, task_id: str, *, owner_id: str | None, is_admin: bool) -> TaskRecord:
    record = await task_store.get(deps.db, task_id) if len(task_id) <= 64 else None
    # someone else's task is "not found": no existence oracle
    if record is None or (not is_admin and record.owner_id != owner_id):
        raise NotFound(f"No task with id {task_id!r}.", code="task_not_found")
    return record


def _result(raw: dict[str, Any] | None) -> JobResult | dict[str, Any] | None:
    if not raw or not raw.get("success") or not isinstance(raw.get("result"), dict):
        return None
    try:
        return msgspec.convert(raw["result"], JobResult)
    except msgspec.ValidationError:
        return dict(raw["result"])  # e.g. a maintenance job's own return shape


async def get_status(deps: Deps, task_id: str, *, owner_id: str | None, is_admin: bool = False) -> TaskStatus:
    record = await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    live = await deps.events.get_progress(task_id)
    result = _result(await deps.queue.result(task_id)) if record.state == "SUCCESS" else None
    if record.state == "SUCCESS":
        progress = 100
    elif record.state == "PENDING":
        progress = 0
    else:
        progress = live or 0
    return TaskStatus(
        task_id=record.id,
        state=record.state,  # type: ignore[arg-type]
        status=STATUS_WORDS[record.state],
        progress=progress,
        result=result,
        error=record.error,
        agent_id=record.agent_id,
        kind=record.kind,
        tries=record.tries,
        created_at=record.created_at,
        started_at=record.started_at,
        completed_at=record.completed_at,
        next_retry_at=record.next_retry_at,
    )
