"""The one writer of task state: the SQL record (tasks/repository.py) and the task's Redis keys
(tasks/live.py) change only through the functions here.

Invariants held here, for every caller (web process, worker, maintenance, admin):
- a result is stored before SUCCESS is visible, so no reader sees SUCCESS without it;
- the first terminal state wins for good: a finished task is never re-opened (an admin retry is
  the one exception, and it starts a fresh history), and a cancelled task never reads SUCCESS;
- an event is published only when the record actually changed (a repeated or losing transition
  is silent);
- progress is one number per task, derived by `progress_of` for every reader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

import msgspec

from agent_service.errors import AppError, Conflict, ServiceUnavailable
from agent_service.kit.coalesce import Coalescer
from agent_service.kit.db import UniqueViolation
from agent_service.kit.deps import Deps
from agent_service.kit.rounds import Round
from agent_service.logging import get_logger
from agent_service.tasks import repository as task_store
from agent_service.tasks.live import TaskLive
from agent_service.tasks.queue import JobQueue
from agent_service.tasks.repository import Counts, TaskRecord
from agent_service.tasks.schemas import (
    ChunkEvent,
    JobResult,
    ProgressEvent,
    StateEvent,
    TaskEvent,
    TaskResult,
)

log = get_logger("agent_service.tasks")
CANCELLED = "Cancelled by request."
# where a run stands: started, input and history loaded, agent called, (invoke) agent answered
STARTED, LOADED, CALLED, ANSWERED = 0, 20, 40, 80
STREAM_CEILING = 90  # a stream's progress stays below this until the task succeeds (100)


def progress_of(state: str, live: int | None) -> int:
    """The progress every reader shows: 0 while queued, 100 once succeeded, otherwise as far as
    the run got (a failed or cancelled task keeps the progress it had reached)."""
    if state == "SUCCESS":
        return 100
    if state == "PENDING":
        return 0
    return live or 0


def stream_progress(chunks: int, expected: int | None) -> int:
    """Progress while a stream's chunks arrive: exact when the agent announced its size, else a
    curve that moves visibly from the first chunk (1 → 44, 5 → 56, 10 → 65, 50 → 82)."""
    span = STREAM_CEILING - CALLED
    if expected:
        return CALLED + min(span, span * chunks // expected)
    return CALLED + int(span * chunks / (chunks + 10))


def live(deps: Deps) -> TaskLive:
    return deps.part(TaskLive.of)


def queue(deps: Deps) -> JobQueue:
    return deps.part(JobQueue.of)


def outbox_listener(deps: Deps) -> Callable[[], None]:
    """Told (no I/O, never raising) when a change wrote a `task_events_outbox` row; the entry
    points provide the webhooks domain's wake-up."""
    return lambda: None


async def _publish(deps: Deps, task_id: str, event: TaskEvent, *, progress: int | None = None) -> None:
    _noted(deps, event)
    await live(deps).append(task_id, event, progress=progress)


def _noted(deps: Deps, event: TaskEvent) -> None:
    if isinstance(event, StateEvent) and event.state in task_store.OUTBOX_EVENTS:
        deps.part(outbox_listener)()


class Submission(msgspec.Struct, kw_only=True):
    """A task to create and queue: its record and its job."""

    task_id: str
    kind: str
    function: str
    payload: dict[str, object]
    agent_id: str | None
    owner_id: str | None
    request_id: str | None
    session_id: str | None = None
    keep_payload: bool = False  # stored for an admin retry (agent tasks)
    scheduled_for: datetime | None = None
    priority: str | None = None
    defer_until: datetime | None = None
    defer_by: float | None = None
    webhook: str | None = None  # JSON of agents.schemas.StoredTaskWebhook


async def submit(deps: Deps, sub: Submission) -> None:
    """PENDING: the record, then the job. If the queue refuses, the record goes too (the client is
    told 503: no phantom task). Once the job is queued the client must hear 202 whatever Redis
    does next, so the first event is best effort. Submissions made at the same time are written
    together (kit/coalesce.py): one INSERT of their records, then one Redis round trip queueing
    their jobs, each followed by its first event."""
    await deps.part(_intake).submit(sub)


def _intake(deps: Deps) -> Coalescer[Submission]:
    async def write(subs: list[Submission]) -> list[BaseException | None]:
        return await _submit_many(deps, subs)

    return Coalescer(write)


async def _submit_many(deps: Deps, subs: list[Submission]) -> list[BaseException | None]:
    rows = [task_store.NewTask(
        task_id=sub.task_id, kind=sub.kind, agent_id=sub.agent_id, owner_id=sub.owner_id, request_id=sub.request_id,
        session_id=sub.session_id, payload=msgspec.json.encode(sub.payload).decode() if sub.keep_payload else None,
        scheduled_for=sub.scheduled_for, priority=sub.priority, webhook=sub.webhook) for sub in subs]
    try:
        await task_store.create_many(deps.db, rows, now=deps.clock())
    except UniqueViolation as exc:  # not with fresh ids; one by one then, so that only the clash fails
        if len(subs) == 1:
            return [exc]
        return [(await _submit_many(deps, [sub]))[0] for sub in subs]
    pending = StateEvent(state="PENDING", progress=0)
    rnd = Round(deps.redis)
    for sub in subs:
        await queue(deps).enqueue(sub.function, sub.payload, job_id=sub.task_id, defer_until=sub.defer_until,
                                  defer_by=sub.defer_by, into=rnd)
        _noted(deps, pending)
        live(deps).append_into(rnd, sub.task_id, [(pending, 0)])
    try:
        await rnd.send()
        return [None] * len(subs)
    except ServiceUnavailable:
        pass
    # the round failed, maybe halfway: each job on its own now (an id already queued stays queued)
    outcomes: list[BaseException | None] = []
    for sub in subs:
        try:
            if await queue(deps).enqueue(sub.function, sub.payload, job_id=sub.task_id,
                                         defer_until=sub.defer_until, defer_by=sub.defer_by):
                with contextlib.suppress(AppError):
                    await _publish(deps, sub.task_id, pending, progress=0)
            outcomes.append(None)
        except ServiceUnavailable as exc:
            await task_store.delete(deps.db, sub.task_id)
            outcomes.append(exc)
    return outcomes


async def defer(deps: Deps, task_id: str) -> None:
    """Over a shared job limit, or a store was down: back to the queue, and not counted as a try."""
    await live(deps).add_deferral(task_id)


async def claim_run(deps: Deps, task_id: str, token: str) -> bool:
    """A run begins; True if the previous run never ended (its worker was lost: kill -9, OOM)."""
    return await live(deps).claim_run(task_id, token)


async def release_run(deps: Deps, task_id: str) -> None:
    """The run ended in any way its worker saw (done, failed, retrying, cancelled, shut down)."""
    await live(deps).release_run(task_id)


async def requeue_lost(deps: Deps, record: TaskRecord, *, function: str, payload: dict[str, object]) -> bool:
    """The sweeper found a task whose job is gone (lost lease and queue entry, a Redis data loss):
    queue it again under the same id. False if the queue already has it."""
    if not await queue(deps).enqueue(function, payload, job_id=record.id):
        return False
    await task_store.touch(deps.db, record.id, now=deps.clock())
    log.warning("task.requeued_lost_job", task_id=record.id, state=record.state)
    return True


async def start(deps: Deps, task_id: str, *, attempt: int, worker_lost: bool = False) -> Counts | None:
    """STARTED for this attempt, and the task's retry and worker-loss counts; None (and nothing
    written) if the task is finished or unknown."""
    counts = await task_store.mark_started(deps.db, task_id, tries=attempt, now=deps.clock(), worker_lost=worker_lost)
    if counts is None:
        return None
    await _publish(deps, task_id, StateEvent(state="STARTED", progress=STARTED, attempt=attempt), progress=STARTED)
    return counts


class Run:
    """One attempt of a started task: its progress and stream output, each published once."""

    def __init__(self, deps: Deps, task_id: str, attempt: int) -> None:
        self._deps = deps
        self.task_id = task_id
        self.attempt = attempt
        self.progress = STARTED
        self.chunks = 0
        self.expected: int | None = None
        self.retries = 0  # transient failures already retried before this run

    async def advance(self, value: int) -> None:
        if value > self.progress:
            self.progress = value
            await _publish(self._deps, self.task_id, ProgressEvent(progress=value, attempt=self.attempt),
                           progress=value)

    async def chunk(self, content: str) -> None:
        index = self.chunks
        self.chunks += 1
        self.progress = max(self.progress, stream_progress(self.chunks, self.expected))
        event = ChunkEvent(index=index, content=content, attempt=self.attempt, progress=self.progress)
        await _publish(self._deps, self.task_id, event, progress=self.progress)

    async def succeed(self, result: TaskResult) -> bool:
        return await succeed(self._deps, self.task_id, result, attempt=self.attempt)

    async def fail(self, reason: str, *, code: str | None = None) -> bool:
        return await fail(self._deps, self.task_id, reason, attempt=self.attempt, progress=self.progress, code=code)

    async def retry(self, reason: str, retry_at: datetime) -> bool:
        if not await task_store.mark_retry(self._deps.db, self.task_id, error=reason, retry_at=retry_at,
                                           now=self._deps.clock()):
            return False
        await _publish(self._deps, self.task_id, StateEvent(state="RETRY", progress=self.progress,
                                                            attempt=self.attempt, error=reason, retry_at=retry_at))
        return True

    async def revoke(self, partial: JobResult | None) -> bool:
        return await revoke(self._deps, self.task_id, partial, attempt=self.attempt, progress=self.progress)


async def succeed(deps: Deps, task_id: str, result: TaskResult, *, attempt: int = 0) -> bool:
    await live(deps).store_result(task_id, result)  # before SUCCESS can be seen
    if not await task_store.mark_finished(deps.db, task_id, state="SUCCESS", error=None, now=deps.clock()):
        log.info("task.finish_lost", task_id=task_id, wanted="SUCCESS")
        return False
    await _publish(deps, task_id, StateEvent(state="SUCCESS", progress=100, attempt=attempt), progress=100)
    return True


async def fail(deps: Deps, task_id: str, reason: str, *, attempt: int = 0, progress: int = 0,
               code: str | None = None) -> bool:
    if not await task_store.mark_finished(deps.db, task_id, state="FAILURE", error=reason, now=deps.clock(),
                                          code=code):
        return False
    await _publish(deps, task_id, StateEvent(state="FAILURE", progress=progress, attempt=attempt, error=reason))
    return True


async def revoke(deps: Deps, task_id: str, partial: JobResult | None = None, *, attempt: int = 0,
                 progress: int = 0) -> bool:
    """REVOKED; a streaming task's partial output is kept as its result (stored first)."""
    if partial is not None:
        await live(deps).store_result(task_id, partial)
    if not await task_store.mark_finished(deps.db, task_id, state="REVOKED", error=CANCELLED, now=deps.clock()):
        return False
    await _publish(deps, task_id, StateEvent(state="REVOKED", progress=progress, attempt=attempt, error=CANCELLED))
    return True


async def request_cancel(deps: Deps, record: TaskRecord) -> None:
    """Ask for the task to stop: a queued or deferred job is taken off the queue and the task is
    REVOKED at once; a running one sees the request within a second and stops itself."""
    await live(deps).request_cancel(record.id)
    if await queue(deps).dequeue(record.id):
        await revoke(deps, record.id)


async def requeue_by_admin(deps: Deps, record: TaskRecord, *, function: str, payload: dict[str, object]) -> None:
    """A failed or cancelled task queued again under the same id, with a fresh history."""
    await queue(deps).forget(record.id)  # arq refuses an id whose result is still kept
    await live(deps).reset(record.id)
    if not await task_store.requeue(deps.db, record.id, now=deps.clock()):
        raise Conflict("The task changed state meanwhile; try again.", code="task_not_retryable")
    await queue(deps).enqueue(function, payload, job_id=record.id)
    await _publish(deps, record.id, StateEvent(state="PENDING", progress=0, retried_by_admin=True), progress=0)
    log.info("task.requeued", task_id=record.id)
