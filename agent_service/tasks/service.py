"""Task status: the durable SQL record joined with live progress and the kept result in Redis."""

from __future__ import annotations

from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.errors import Conflict, Forbidden, NotFound
from agent_service.kit import pagination as cursors
from agent_service.kit.deps import Deps
from agent_service.tasks import repository as task_store
from agent_service.tasks.repository import TaskRecord
from agent_service.tasks.schemas import (
    FINISHED_STATES,
    STATUS_WORDS,
    JobResult,
    TaskPage,
    TaskQuery,
    TaskStatus,
    TaskSummary,
)


async def get_record(deps: Deps, task_id: str, *, owner_id: str | None, is_admin: bool) -> TaskRecord:
    record = await task_store.get(deps.db, task_id) if len(task_id) <= 64 else None
    # someone else's task is "not found": no existence oracle
    if record is None or (not is_admin and record.owner_id != owner_id):
        raise NotFound(f"No task with id {task_id!r}.", code="task_not_found")
    return record


def _result(raw: Any) -> JobResult | dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    try:
        return msgspec.convert(raw, JobResult)
    except msgspec.ValidationError:
        return dict(raw)  # e.g. a maintenance job's own return shape


async def get_status(deps: Deps, task_id: str, *, owner_id: str | None, is_admin: bool = False) -> TaskStatus:
    record = await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    live = await deps.events.get_progress(task_id)
    # a cancelled streaming task keeps its partial output as its result
    result = _result(await deps.events.get_result(task_id)) if record.state in ("SUCCESS", "REVOKED") else None
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
        scheduled_for=record.scheduled_for,
        priority=record.priority,
    )


async def cancel(deps: Deps, task_id: str, *, owner_id: str, is_admin: bool) -> TaskStatus:
    """A queued or deferred task never starts; a running one is stopped by its worker within a second.

    The request is recorded first (a Redis key the job checks at start and polls while running),
    then the job is taken off the queue if it has not started; either way it ends REVOKED.
    """
    record = await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    if record.state in FINISHED_STATES:
        raise Conflict(f"Task {task_id!r} has already finished ({record.state}).", code="task_finished")
    await deps.events.request_cancel(task_id)
    if await deps.queue.dequeue(task_id):
        if await task_store.mark_finished(deps.db, task_id, state="REVOKED", error="Cancelled by request.",
                                          now=deps.clock()):
            await deps.events.publish(task_id, "state", {"state": "REVOKED", "error": "Cancelled by request."})
    return await get_status(deps, task_id, owner_id=owner_id, is_admin=is_admin)


async def list_tasks(deps: Deps, q: TaskQuery, *, owner_id: str, is_admin: bool) -> TaskPage:
    if not is_admin and q.owner not in (None, owner_id):
        raise Forbidden("Only admins may list other users' tasks.", code="insufficient_scope")
    owner = q.owner if is_admin else owner_id  # admins without `owner=` see everyone's
    rows = await task_store.list_page(deps.db, owner_id=owner, state=q.state, agent_id=q.agent, limit=q.limit + 1,
                                      before=cursors.before_of(q.cursor))
    page, nxt = cursors.page_of(rows, q.limit, lambda r: (iso(r.created_at) or "", r.id))
    live = await deps.events.get_progress_many([r.id for r in page if r.state in ("STARTED", "RETRY")])
    items = [summary(r, progress=100 if r.state == "SUCCESS" else live.get(r.id, 0)) for r in page]
    return TaskPage(items=items, next_cursor=nxt)


def summary(r: TaskRecord, progress: int = 0) -> TaskSummary:
    return TaskSummary(task_id=r.id, state=r.state, status=STATUS_WORDS[r.state], agent_id=r.agent_id,  # type: ignore[arg-type]
                       kind=r.kind, owner_id=r.owner_id, tries=r.tries, error=r.error, created_at=r.created_at,
                       started_at=r.started_at, completed_at=r.completed_at, scheduled_for=r.scheduled_for,
                       progress=progress)
