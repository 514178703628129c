"""The sweeper: reconciles task records with the queue, so no task is stranded.

A record that is unfinished but has not changed for a while is checked against the queue: if its
job is gone (a lease and a queue entry lost together, a Redis restored without its data, a job
dropped by an old bug), an agent task is queued again from its stored input and any other task
ends as FAILURE with code `job_lost`. It runs in every worker, every SWEEP_INTERVAL seconds, and
one worker at a time does the work (a Redis claim), so a stranded task is reconciled within about
two leases plus one interval.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import msgspec

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.tasks import lifecycle, queue
from agent_service.tasks import repository as task_store

log = get_logger("agent_service.tasks")
SWEEP_INTERVAL = 10.0
BATCH = 200


async def sweep_once(deps: Deps) -> int:
    """Reconcile stale records now; returns how many were re-queued or failed."""
    if not await deps.redis.set(f"{deps.prefix}sweeper", b"1", nx=True, px=int(SWEEP_INTERVAL * 1000)):
        return 0  # another worker sweeps this round
    lease = deps.settings.job_lease_seconds
    before = deps.clock() - timedelta(seconds=2 * lease + SWEEP_INTERVAL)
    fixed = 0
    for record in await task_store.stale(deps.db, states=("PENDING", "STARTED", "RETRY"), before=before,
                                         limit=BATCH):
        if await lifecycle.queue(deps).exists(record.id):
            continue
        if record.payload and record.kind in queue.JOB_FOR_KIND:
            payload: dict[str, object] = msgspec.json.decode(record.payload)
            if await lifecycle.requeue_lost(deps, record, function=queue.JOB_FOR_KIND[record.kind], payload=payload):
                fixed += 1
        elif await lifecycle.fail(deps, record.id, "The task's job was lost and cannot be run again.",
                                  code="job_lost"):
            log.warning("task.job_lost", task_id=record.id, state=record.state)
            fixed += 1
    return fixed


async def run_sweeper(deps: Deps) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            await sweep_once(deps)
        except AppError:
            log.warning("sweeper.unavailable")  # a store is down: next round
