"""Tasks as other parts see them: status (the SQL record joined with live progress and the kept
result), lists, cancel, submission, and the numbers the admin views need."""

from __future__ import annotations

from datetime import datetime

from agent_service.errors import AppError, Conflict, Forbidden, NotFound
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.tasks import follow, lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks.batches import batch_completion as batch_completion  # webhooks' batch.completed
from agent_service.tasks.batches import batch_webhook_secret as batch_webhook_secret
from agent_service.tasks.lifecycle import progress_of
from agent_service.tasks.live import Snapshot
from agent_service.tasks.repository import TaskRecord as TaskRecord  # the record other domains read
from agent_service.tasks.schemas import (
    FINISHED_STATES,
    STATUS_WORDS,
    JobResult,
    TaskPage,
    TaskQuery,
    TaskStatus,
    TaskSummary,
)
from agent_service.tasks.submit import enqueue as enqueue  # submission is part of this domain's face
from agent_service.tasks.submit import status_url as status_url
from agent_service.usage import service as usage

log = get_logger(__name__)
LIVE_STATES = ("STARTED", "RETRY", "FAILURE", "REVOKED")  # states whose progress comes from Redis


async def get_record(deps: Deps, task_id: str, *, owner_id: str | None, is_admin: bool) -> TaskRecord:
    record = await task_store.get(deps.db, task_id) if len(task_id) <= 64 else None
    # someone else's task is "not found": no existence oracle
    if record is None or (not is_admin and record.owner_id != owner_id):
        raise NotFound(f"No task with id {task_id!r}.", code="task_not_found")
    return record


async def status_of(deps: Deps, record: TaskRecord) -> TaskStatus:
    """One Redis round trip: progress, and for a finished task its result (a cancelled stream
    keeps its partial output) with the chunks read back from its event stream."""
    finished_ok = record.state in ("SUCCESS", "REVOKED")
    try:
        snap = await lifecycle.live(deps).snapshot(record.id, with_result=finished_ok,
                                                   with_chunks=finished_ok and record.kind == "stream")
    except AppError:  # Redis is down: SQL holds the state; say that the live part is missing
        snap, live = Snapshot(progress=None, result=None, chunks=None), False
    else:
        live = True
    result = snap.result
    if isinstance(result, JobResult) and snap.chunks is not None:
        result.chunks = snap.chunks
    return TaskStatus(
        task_id=record.id, state=record.state, status=STATUS_WORDS[record.state],  # type: ignore[arg-type]
        progress=progress_of(record.state, snap.progress), result=result, error=record.error,
        error_code=record.error_code, retries=record.retries, worker_losses=record.worker_losses, live=live,
        agent_id=record.agent_id, kind=record.kind, tries=record.tries, created_at=record.created_at,
        started_at=record.started_at, completed_at=record.completed_at, next_retry_at=record.next_retry_at,
        scheduled_for=record.scheduled_for, priority=record.priority,
    )


async def get_status(deps: Deps, task_id: str, *, owner_id: str | None, is_admin: bool = False) -> TaskStatus:
    return await status_of(deps, await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin))


async def cancel(deps: Deps, task_id: str, *, owner_id: str, is_admin: bool) -> TaskStatus:
    """A queued or deferred task is REVOKED at once and never starts; a running one is stopped by
    its worker within a second (the answer then shows the state it is in, e.g. STARTED)."""
    record = await get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    if record.state in FINISHED_STATES:
        raise Conflict(f"Task {task_id!r} has already finished ({record.state}).", code="task_finished")
    await lifecycle.request_cancel(deps, record)
    status = await get_status(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    if status.state == "REVOKED" and status.started_at is None:  # it never runs: its budget hold goes now
        await usage.release(deps, record.owner_id, [record.id])
    return status


async def list_tasks(deps: Deps, q: TaskQuery, *, owner_id: str, is_admin: bool) -> TaskPage:
    if not is_admin and q.owner not in (None, owner_id):
        raise Forbidden("Only admins may list other users' tasks.", code="insufficient_scope")
    owner = q.owner if is_admin else owner_id  # admins without `owner=` see everyone's
    page, nxt = await task_store.list_page(deps.db, owner_id=owner, state=q.state, agent_id=q.agent, limit=q.limit,
                                           cursor=q.cursor)
    try:
        live = await lifecycle.live(deps).progress_many([r.id for r in page if r.state in LIVE_STATES])
    except AppError:  # Redis is down: the list comes from SQL alone (running tasks show 0)
        live = {}
    return TaskPage(items=[summary(r, progress_of(r.state, live.get(r.id))) for r in page], next_cursor=nxt)


async def list_records(deps: Deps, *, owner_id: str, agent_id: str | None = None, states: tuple[str, ...] = (),
                       session_id: str | None = None, limit: int, cursor: str | None,
                       ) -> tuple[list[TaskRecord], str | None]:
    """The caller's task records, newest first (a protocol facade builds its own task shape)."""
    return await task_store.list_page(deps.db, owner_id=owner_id, state=None, agent_id=agent_id, limit=limit,
                                      cursor=cursor, session_id=session_id, states=states)


async def count_records(deps: Deps, *, owner_id: str, agent_id: str | None = None, states: tuple[str, ...] = (),
                        session_id: str | None = None) -> int:
    return await task_store.count(deps.db, owner_id=owner_id, agent_id=agent_id, session_id=session_id,
                                  states=states)


async def open_events(deps: Deps, task_id: str, *, owner_id: str, is_admin: bool,
                      last_event_id: str | None) -> follow.EventStream:
    """A task's live events, exactly as GET …/events serves them, for another domain's stream."""
    return await follow.open_events(deps, task_id, owner_id=owner_id, is_admin=is_admin,
                                    last_event_id=last_event_id)


def summary(r: TaskRecord, progress: int) -> TaskSummary:
    return TaskSummary(task_id=r.id, state=r.state, status=STATUS_WORDS[r.state], agent_id=r.agent_id,  # type: ignore[arg-type]
                       kind=r.kind, owner_id=r.owner_id, tries=r.tries, error=r.error, created_at=r.created_at,
                       started_at=r.started_at, completed_at=r.completed_at, scheduled_for=r.scheduled_for,
                       progress=progress)


# --- what the admin views (ops) read ---------------------------------------------------------


async def state_counts(deps: Deps) -> dict[str, int]:
    return await task_store.count_by_state(deps.db)


async def finished_since(deps: Deps, since: datetime) -> list[tuple[str, str]]:
    return await task_store.finished_since(deps.db, since)


async def recent_failures(deps: Deps, *, limit: int) -> list[TaskSummary]:
    rows = await task_store.recent_failures(deps.db, limit=limit)
    try:
        live = await lifecycle.live(deps).progress_many([r.id for r in rows])
    except AppError:
        live = {}
    return [summary(r, progress_of(r.state, live.get(r.id))) for r in rows]


async def queue_depth(deps: Deps) -> dict[str, int]:
    return await lifecycle.queue(deps).depth(now_ms=int(deps.clock().timestamp() * 1000))
