"""The one writer of task state: the SQL record (tasks/repository.py) and the task's Redis keys
(tasks/live.py) change only through the functions here and in its package-internal parts,
tasks/lifecycle_submit.py (a task's creation), tasks/lifecycle_marks.py (a run's start and
success in SQL, coalesced) and tasks/lifecycle_events.py (how the changes reach Redis); callers
know only this module, which re-exports what they use of the others.

Invariants held here, for every caller (web process, worker, maintenance, admin):
- a result is stored before SUCCESS is visible, so no reader sees SUCCESS without it;
- the first terminal state wins for good: a finished task is never re-opened (an admin retry is
  the one exception, and it starts a fresh history), and a cancelled task never reads SUCCESS;
- an event is published only when the record actually changed (a repeated or losing transition
  is silent);
- progress is one number per task, derived by `progress_of` for every reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

from agent_service.errors import AppError, Conflict
from agent_service.kit.deps import Deps
from agent_service.kit.rounds import Round
from agent_service.logging import get_logger
from agent_service.tasks import repository as task_store
from agent_service.tasks.lifecycle_events import live as live
from agent_service.tasks.lifecycle_events import outbox_listener as outbox_listener
from agent_service.tasks.lifecycle_events import publish, publish_into, send
from agent_service.tasks.lifecycle_events import queue as queue
from agent_service.tasks.lifecycle_marks import mark_started, mark_succeeded
from agent_service.tasks.lifecycle_submit import Submission as Submission
from agent_service.tasks.lifecycle_submit import submit as submit
from agent_service.tasks.live import Published, RunClaim
from agent_service.tasks.repository import Counts, TaskRecord
from agent_service.tasks.schemas import (
    ChunkEvent,
    JobResult,
    ProgressEvent,
    StateEvent,
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



async def defer(deps: Deps, task_id: str, *, claim: RunClaim | None = None, rnd: Round | None = None) -> None:
    """Over a shared job limit, or a store was down: back to the queue, and not counted as a try.
    A run mark the start took (`claim`) is given back as it was found; `rnd`: with the step's other
    writes, in one round trip."""
    step = rnd if rnd is not None else Round(deps.redis)
    live(deps).add_deferral_into(step, task_id)
    if claim is not None:
        live(deps).unclaim_run_into(step, task_id, claim)
    await step.send()


async def claim_run(deps: Deps, task_id: str, token: str) -> bool:
    """A run begins; True if the previous run never ended (its worker was lost: kill -9, OOM)."""
    return await live(deps).claim_run(task_id, token)


def claim_run_into(deps: Deps, rnd: Round, task_id: str, token: str) -> RunClaim:
    """A run begins, in the round of the job's start: the claim tells, once the round is sent,
    whether the previous run never ended, how many starts were deferrals, and whether a cancel
    was asked for."""
    return live(deps).claim_run_into(rnd, task_id, token)


async def release_run(deps: Deps, task_id: str) -> None:
    """The run ended in any way its worker saw (done, failed, retrying, cancelled, shut down)."""
    await live(deps).release_run(task_id)


def release_run_into(deps: Deps, rnd: Round, task_id: str) -> None:
    live(deps).release_run_into(rnd, task_id)


def unclaim_run_into(deps: Deps, rnd: Round, task_id: str, claim: RunClaim) -> None:
    """A start that did not become a run: its mark back as the claim found it."""
    live(deps).unclaim_run_into(rnd, task_id, claim)


async def requeue_lost(deps: Deps, record: TaskRecord, *, function: str, payload: dict[str, object]) -> bool:
    """The sweeper found a task whose job is gone (lost lease and queue entry, a Redis data loss):
    queue it again under the same id. False if the queue already has it."""
    if not await queue(deps).enqueue(function, payload, job_id=record.id):
        return False
    await task_store.touch(deps.db, record.id, now=deps.clock())
    log.warning("task.requeued_lost_job", task_id=record.id, state=record.state)
    return True


async def start(deps: Deps, task_id: str, *, attempt: int, worker_lost: bool = False,
                run: Run | None = None) -> Counts | None:
    """STARTED for this attempt, and the task's retry and worker-loss counts; None (and nothing
    written) if the task is finished or unknown. With `run`, the event goes out with the run's
    next write (Run.flush) instead of by itself."""
    counts = await mark_started(deps, task_id, tries=attempt, lost=worker_lost)
    if counts is None:
        return None
    event = StateEvent(state="STARTED", progress=STARTED, attempt=attempt)
    if run is None:
        await publish(deps, task_id, event, progress=STARTED)
    else:
        run.pending.append((event, STARTED))
    return counts


class Run:
    """One attempt of a started task: its progress and stream output, each published once.

    Events that follow each other with nothing to wait for between them (STARTED, input loaded,
    agent called) wait in `pending` and go out together with the run's next write: `flush_soon`
    before anything slow (the agent's call) sends them while it runs, every other write of the run
    waits for that and sends what is pending first, and the worker's last round (`end_into`) takes
    whatever is left."""

    def __init__(self, deps: Deps, task_id: str, attempt: int) -> None:
        self._deps = deps
        self.task_id = task_id
        self.attempt = attempt
        self.progress = STARTED
        self.chunks = 0
        self.expected: int | None = None
        self.retries = 0  # transient failures already retried before this run
        self.pending: list[Published] = []
        self._sending: asyncio.Future[None] | None = None

    def note(self, value: int) -> None:
        """Progress `value`, published with the run's next write (nothing if it does not move)."""
        if value > self.progress:
            self.progress = value
            self.pending.append((ProgressEvent(progress=value, attempt=self.attempt), value))

    async def advance(self, value: int) -> None:
        self.note(value)
        await self.flush()

    async def flush(self) -> None:
        await self._settled()
        if self.pending:
            events, self.pending = self.pending, []
            await send(self._deps, self.task_id, events)

    def flush_soon(self) -> None:
        """Send what is pending without waiting (the agent's call goes on meanwhile); the run's
        next write waits for it first, so that the stream keeps its order, and raises its error."""
        if self.pending and self._sending is None:
            events, self.pending = self.pending, []
            self._sending = asyncio.ensure_future(send(self._deps, self.task_id, events))

    async def _settled(self) -> None:
        if self._sending is not None:
            sending, self._sending = self._sending, None
            await sending

    async def end_into(self, rnd: Round) -> None:
        """What is still pending, into the run's last round (an earlier send that failed is
        given up: the run is over either way)."""
        with contextlib.suppress(AppError):
            await self._settled()
        events, self.pending = self.pending, []
        publish_into(self._deps, rnd, self.task_id, events)

    async def chunk(self, content: str) -> None:
        index = self.chunks
        self.chunks += 1
        self.progress = max(self.progress, stream_progress(self.chunks, self.expected))
        self.pending.append((ChunkEvent(index=index, content=content, attempt=self.attempt, progress=self.progress),
                             self.progress))
        await self.flush()

    async def succeed(self, result: TaskResult, *, then: Round | None = None) -> bool:
        """SUCCESS (pending events go out with the result, in one round trip); with `then`, the
        SUCCESS event is one of that round's writes, sent by the caller right after."""
        await self._settled()
        events, self.pending = self.pending, []
        return await succeed(self._deps, self.task_id, result, attempt=self.attempt, before=events, then=then)

    async def fail(self, reason: str, *, code: str | None = None) -> bool:
        await self.flush()
        return await fail(self._deps, self.task_id, reason, attempt=self.attempt, progress=self.progress, code=code)

    async def retry(self, reason: str, retry_at: datetime) -> bool:
        await self.flush()
        if not await task_store.mark_retry(self._deps.db, self.task_id, error=reason, retry_at=retry_at,
                                           now=self._deps.clock()):
            return False
        await publish(self._deps, self.task_id, StateEvent(state="RETRY", progress=self.progress,
                                                            attempt=self.attempt, error=reason, retry_at=retry_at))
        return True

    async def revoke(self, partial: JobResult | None) -> bool:
        await self.flush()
        return await revoke(self._deps, self.task_id, partial, attempt=self.attempt, progress=self.progress)


async def succeed(deps: Deps, task_id: str, result: TaskResult, *, attempt: int = 0,
                  before: list[Published] | None = None, then: Round | None = None) -> bool:
    """SUCCESS. `before`: the run's events still to publish, sent with the result; `then`: a round
    the caller sends right after, which the SUCCESS event joins."""
    first = Round(deps.redis)
    publish_into(deps, first, task_id, before or [])
    live(deps).store_result_into(first, task_id, result)
    await first.send()  # before SUCCESS can be seen
    if not await mark_succeeded(deps, task_id):
        log.info("task.finish_lost", task_id=task_id, wanted="SUCCESS")
        return False
    done: list[Published] = [(StateEvent(state="SUCCESS", progress=100, attempt=attempt), 100)]
    if then is None:
        await send(deps, task_id, done)
    else:
        publish_into(deps, then, task_id, done)
    return True


async def fail(deps: Deps, task_id: str, reason: str, *, attempt: int = 0, progress: int = 0,
               code: str | None = None) -> bool:
    if not await task_store.mark_finished(deps.db, task_id, state="FAILURE", error=reason, now=deps.clock(),
                                          code=code):
        return False
    await publish(deps, task_id, StateEvent(state="FAILURE", progress=progress, attempt=attempt, error=reason))
    return True


async def revoke(deps: Deps, task_id: str, partial: JobResult | None = None, *, attempt: int = 0,
                 progress: int = 0) -> bool:
    """REVOKED; a streaming task's partial output is kept as its result (stored first)."""
    if partial is not None:
        await live(deps).store_result(task_id, partial)
    if not await task_store.mark_finished(deps.db, task_id, state="REVOKED", error=CANCELLED, now=deps.clock()):
        return False
    await publish(deps, task_id, StateEvent(state="REVOKED", progress=progress, attempt=attempt, error=CANCELLED))
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
    await publish(deps, record.id, StateEvent(state="PENDING", progress=0, retried_by_admin=True), progress=0)
    log.info("task.requeued", task_id=record.id)

