"""Admin operations on the job system: overview (queue, workers, throughput, failures) and retry."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta

import msgspec

from agent_service.agents.service import status_url
from agent_service.errors import AppError, Conflict, NotFound
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.ops.schemas import JobsOverview, MaintenanceJob, MaintenanceList, MinuteStat, QueueDepth, WorkerInfo
from agent_service.ops.workers import WorkerBoard
from agent_service.tasks import maintenance as maintenance_runner
from agent_service.tasks import queue as names
from agent_service.tasks import repository as task_store
from agent_service.tasks import service as task_service
from agent_service.tasks.schemas import AgentJob, TaskAccepted, TaskStatus

log = get_logger(__name__)
WINDOW_MINUTES = 15


def _minute(ts: str) -> datetime:
    return datetime.fromisoformat(ts).replace(second=0, microsecond=0)


async def overview(deps: Deps) -> JobsOverview:
    now = deps.clock()
    depth = await deps.queue.depth(now_ms=int(now.timestamp() * 1000))
    states = await task_store.count_by_state(deps.db)
    board = WorkerBoard(deps.redis, queue_name=deps.settings.queue_name)
    workers = [msgspec.convert(w, WorkerInfo, strict=False) for w in await board.alive()]
    since = (now - timedelta(minutes=WINDOW_MINUTES - 1)).replace(second=0, microsecond=0)
    counts: Counter[tuple[datetime, str]] = Counter(
        (_minute(ts), state) for ts, state in await task_store.finished_since(deps.db, since)
    )
    throughput = [
        MinuteStat(minute=m, completed=counts[(m, "SUCCESS")], failed=counts[(m, "FAILURE")],
                   cancelled=counts[(m, "REVOKED")])
        for m in (since + timedelta(minutes=i) for i in range(WINDOW_MINUTES))
    ]
    failures = [task_service.summary(r) for r in await task_store.recent_failures(deps.db, limit=20)]
    return JobsOverview(
        queue=QueueDepth(queued=depth["queued"], deferred=depth["deferred"],
                         in_progress=states.get("STARTED", 0), retrying=states.get("RETRY", 0)),
        workers=sorted(workers, key=lambda w: w.worker_id), throughput=throughput, recent_failures=failures,
        window_minutes=WINDOW_MINUTES,
    )


async def retry(deps: Deps, task_id: str) -> TaskStatus:
    """Run a failed or cancelled task again under the same id, from its stored payload."""
    record = await task_service.get_record(deps, task_id, owner_id="", is_admin=True)
    if record.state not in ("FAILURE", "REVOKED") or not record.payload:
        raise Conflict(f"Only failed or cancelled agent tasks can be retried (this one is {record.state}).",
                       code="task_not_retryable")
    job = msgspec.json.decode(record.payload, type=AgentJob)
    await deps.queue.forget(task_id)  # arq refuses an id whose result is still kept
    await deps.events.clear_cancel(task_id)  # a stale cancel must not kill the new run
    await deps.events.reset(task_id)
    if not await task_store.requeue(deps.db, task_id, now=deps.clock()):
        raise Conflict("The task changed state meanwhile; try again.", code="task_not_retryable")
    await deps.queue.enqueue(names.JOB_FOR_KIND[record.kind], job, job_id=task_id)
    await deps.events.publish(task_id, "state", {"state": "PENDING", "retried_by_admin": True}, progress=0)
    log.info("task.requeued", task_id=task_id)
    return await task_service.get_status(deps, task_id, owner_id="", is_admin=True)


async def maintenance_status(deps: Deps) -> MaintenanceList:
    last = await maintenance_runner.last_results(deps)
    return MaintenanceList(jobs=[
        MaintenanceJob(name=name, schedule=getattr(deps.settings, f"cron_{name}"), last=last.get(name))
        for name in maintenance_runner.JOBS
    ])


async def trigger_maintenance(deps: Deps, name: str, *, owner_id: str, request_id: str | None) -> TaskAccepted:
    if name not in maintenance_runner.JOBS:
        raise NotFound(f"No maintenance job named {name!r}.", code="job_not_found")
    task_id = uuid.uuid4().hex
    await task_store.create(deps.db, task_id=task_id, kind="maintenance", agent_id=name, owner_id=owner_id,
                            request_id=request_id, session_id=None, now=deps.clock())
    try:
        await deps.queue.enqueue(name, {"task_id": task_id}, job_id=task_id)
    except AppError:
        await task_store.delete(deps.db, task_id)
        raise
    await deps.events.publish(task_id, "state", {"state": "PENDING"}, progress=0)
    return TaskAccepted(task_id=task_id, status="queued", message=f"Maintenance job {name!r} queued.",
                        status_url=status_url(deps, task_id))
