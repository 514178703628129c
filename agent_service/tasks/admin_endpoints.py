"""/api/v1/jobs: the admin view of the job system, and re-running a failed task."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context
from agent_service.kit.endpoint import operation, route
from agent_service.kit.io import json_response
from agent_service.ops.schemas import JobsOverview, MaintenanceList
from agent_service.tasks import admin as job_admin
from agent_service.tasks.schemas import TaskAccepted, TaskStatus


@operation(summary="Job system overview", tag="Admin", response=JobsOverview, scope="admin", errors=(401, 403, 503),
           description="Queue depth (queued, deferred, in progress, retrying), the workers alive with their last "
                       "heartbeat and counters, completions and failures per minute over the last 15 minutes, "
                       "and the most recent failures with their errors.")
async def overview(request: Request) -> Response:
    return json_response(await job_admin.overview(context.deps(request)), headers={"Cache-Control": "no-store"})


@operation(summary="Retry a failed task", tag="Admin", response=TaskStatus, status=202, scope="admin",
           errors=(401, 403, 404, 409, 503),
           description="Queue a failed or cancelled agent task again under the same id, from its stored input.")
async def retry(request: Request) -> Response:
    context.audit(request, "EXECUTE", "task", request.path_params["task_id"], retry=True)
    status = await job_admin.retry(context.deps(request), request.path_params["task_id"])
    return json_response(status, status=202, headers={"Location": f"/api/v1/agents/tasks/{status.task_id}"})


@operation(summary="Maintenance jobs", tag="Admin", response=MaintenanceList, scope="admin", errors=(401, 403, 503),
           description="The four maintenance jobs, their cron schedules (UTC) and the last result of each.")
async def maintenance(request: Request) -> Response:
    return json_response(await job_admin.maintenance_status(context.deps(request)))


@operation(summary="Run a maintenance job now", tag="Admin", response=TaskAccepted, status=202, scope="admin",
           errors=(401, 403, 404, 503),
           description="Queue one of `cleanup_expired_sessions`, `archive_old_audit_logs`, "
                       "`cleanup_token_blacklist`, `cleanup_temp_files`; follow it at `status_url` like any task "
                       "(its result is the job's return value).")
async def run_maintenance(request: Request) -> Response:
    name = request.path_params["name"]
    context.audit(request, "EXECUTE", "maintenance", name, trigger="manual")
    accepted = await job_admin.trigger_maintenance(context.deps(request), name, owner_id=context.owner_id(request),
                                                   request_id=context.request_id(request))
    return json_response(accepted, status=202, headers={"Location": accepted.status_url})


routes = [
    route("/jobs", overview, ["GET"]),
    route("/jobs/maintenance", maintenance, ["GET"]),
    route("/jobs/maintenance/{name}", run_maintenance, ["POST"]),
    route("/jobs/{task_id}/retry", retry, ["POST"]),
]
