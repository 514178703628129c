"""The batch half of the one writer of task state (tasks/lifecycle.py holds the rest): a batch's
records and jobs created together, or not at all, and a batch's cancel. Every other change of a
batch's tasks is lifecycle's, task by task, as for any task."""

from __future__ import annotations

import asyncio

import msgspec

from agent_service.kit.deps import Deps
from agent_service.kit.rounds import Round
from agent_service.logging import get_logger
from agent_service.tasks import batch_repository as batch_store
from agent_service.tasks import lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks.lifecycle import Submission
from agent_service.tasks.schemas import FINISHED_STATES, StateEvent

log = get_logger("agent_service.tasks")
CONCURRENCY = 32  # a batch's cancels in flight at once (the connection pool serves the rest)
ROUND = 250  # jobs queued per Redis round trip (a round carries each job's script: bounded in size)


async def submit_batch(deps: Deps, batch: batch_store.BatchRecord, subs: list[Submission]) -> None:
    """A batch of PENDING tasks: every record in one transaction with the batch's, then every job
    (pipelined: ROUND jobs, each with its first event, per round trip).
    If the queue refuses any job (or the request is cancelled midway), the batch and all its
    records go, in one transaction: the client hears 503 and no half-queued batch is ever visible.
    A job that did get queued finds no record and its worker drops it (as for a single task whose
    record went), so nothing of the batch runs twice or alone."""
    rows = [batch_store.BatchTask(
        task_id=s.task_id, kind=s.kind, request_id=s.request_id, session_id=s.session_id,
        payload=msgspec.json.encode(s.payload).decode() if s.keep_payload else None,
        scheduled_for=s.scheduled_for, priority=s.priority, webhook=s.webhook) for s in subs]
    await batch_store.create(deps.db, batch, rows)
    pending = StateEvent(state="PENDING", progress=0)
    try:
        for i in range(0, len(subs), ROUND):  # each slice's jobs and first events in one round trip
            rnd = Round(deps.redis)
            for sub in subs[i:i + ROUND]:
                await lifecycle.queue(deps).enqueue(sub.function, sub.payload, job_id=sub.task_id,
                                                    defer_until=sub.defer_until, defer_by=sub.defer_by, into=rnd)
                lifecycle.live(deps).append_into(rnd, sub.task_id, [(pending, 0)])
            await rnd.send()
    except BaseException:  # broad: a refused job or a cancelled request takes the whole batch back out
        await asyncio.shield(batch_store.delete(deps.db, batch.id))
        log.warning("batch.not_queued", batch_id=batch.id)
        raise


async def cancel_batch(deps: Deps, batch_id: str, task_ids: list[str]) -> None:
    """The batch marked cancelled (the first time only), then a cancel asked for each of its
    unfinished tasks: queued ones are REVOKED at once, running ones stop within a second."""
    await batch_store.mark_cancelled(deps.db, batch_id, now=deps.clock())
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(task_id: str) -> None:
        async with gate:
            record = await task_store.get(deps.db, task_id)
            if record is not None and record.state not in FINISHED_STATES:
                await lifecycle.request_cancel(deps, record)

    results = await asyncio.gather(*(one(t) for t in task_ids), return_exceptions=True)
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        raise failed
