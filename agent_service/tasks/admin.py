"""Admin operations on tasks: run a failed or cancelled task again, and run a maintenance job now
(as a task anyone with the admin scope can follow)."""

from __future__ import annotations

import msgspec

from agent_service.errors import Conflict, NotFound
from agent_service.kit import ids
from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import find, registry
from agent_service.tasks import lifecycle, maintenance, queue
from agent_service.tasks.schemas import AgentJob, MaintenanceInfo, MaintenanceList, TaskAccepted, TaskStatus
from agent_service.tasks.service import get_record, get_status, status_url


async def retry(deps: Deps, task_id: str) -> TaskStatus:
    """Run a failed or cancelled agent task again under the same id, from its stored payload."""
    record = await get_record(deps, task_id, owner_id="", is_admin=True)
    if record.state not in ("FAILURE", "REVOKED") or not record.payload:
        raise Conflict(f"Only failed or cancelled agent tasks can be retried (this one is {record.state}).",
                       code="task_not_retryable")
    job = msgspec.json.decode(record.payload, type=AgentJob)
    await lifecycle.requeue_by_admin(deps, record, function=queue.JOB_FOR_KIND[record.kind],
                                     payload=msgspec.to_builtins(job))
    return await get_status(deps, task_id, owner_id="", is_admin=True)


async def trigger_maintenance(deps: Deps, name: str, *, owner_id: str, request_id: str | None) -> TaskAccepted:
    job = find(deps, name)
    if job is None:
        raise NotFound(f"No maintenance job named {name!r}.", code="job_not_found")
    task_id = ids.time_ordered()
    await lifecycle.submit(deps, lifecycle.Submission(
        task_id=task_id, kind="maintenance", function=job.function_name(deps.prefix), payload={"task_id": task_id},
        agent_id=job.name, owner_id=owner_id, request_id=request_id,
    ))
    return TaskAccepted(task_id=task_id, status="queued", message=f"Maintenance job {name!r} queued.",
                        status_url=status_url(deps, task_id))


async def maintenance_status(deps: Deps) -> MaintenanceList:
    last = await maintenance.last_runs(deps)
    return MaintenanceList(jobs=[
        MaintenanceInfo(name=job.name, schedule=job.schedule(deps), last=last.get(job.name))
        for job in deps.part(registry)
    ])
