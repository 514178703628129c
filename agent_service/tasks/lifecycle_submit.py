"""Part of the one writer of task state (tasks/lifecycle.py, which re-exports `Submission` and
`submit`): a task's creation, its PENDING record, its job and its first event. Submissions made
at the same moment are written together (kit/coalesce.py), so a burst of clients costs one INSERT
and one Redis round trip instead of one of each per task."""

from __future__ import annotations

import contextlib
from datetime import datetime

import msgspec

from agent_service.errors import AppError, ServiceUnavailable
from agent_service.kit.coalesce import Coalescer
from agent_service.kit.db import UniqueViolation
from agent_service.kit.deps import Deps
from agent_service.kit.rounds import Round
from agent_service.tasks import repository as task_store
from agent_service.tasks.lifecycle_events import live, noted, publish, queue
from agent_service.tasks.schemas import StateEvent


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
        noted(deps, pending)
        # no progress written: a PENDING task's is 0 whatever the hash says (progress_of)
        live(deps).append_into(rnd, sub.task_id, [(pending, None)])
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
                    await publish(deps, sub.task_id, pending)
            outcomes.append(None)
        except ServiceUnavailable as exc:
            await task_store.delete(deps.db, sub.task_id)
            outcomes.append(exc)
    return outcomes
