"""/api/v1/jobs/…: admin actions on tasks — retry a failed one, list and run maintenance jobs.
(The job system overview, `GET /jobs`, is ops': it reads the workers' heartbeats.)"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context
from agent_service.kit.endpoint import Docs, Link, Scoped, endpoint, route
from agent_service.kit.io import json_response
from agent_service.tasks import admin
from agent_service.tasks.schemas import MaintenanceList, TaskAccepted, TaskStatus


@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="Retry a failed task", tag="Admin", response=TaskStatus, status=202,
        errors=(401, 403, 404, 409, 503),
        links=(Link(name="GetTaskStatus", operation="get_task", parameters={"task_id": "$response.body#/task_id"},
                    description="Follow the task run again."),),
        description="Queue a failed or cancelled agent task again under the same id, from its stored input.",
    ),
)
async def retry(request: Request) -> Response:
    context.audit(request, "EXECUTE", "task", request.path_params["task_id"], retry=True)
    status = await admin.retry(context.deps(request), request.path_params["task_id"])
    return json_response(status, status=202, headers={"Location": f"/api/v1/agents/tasks/{status.task_id}/status"})


@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="Maintenance jobs", tag="Admin", response=MaintenanceList, errors=(401, 403, 503),
        description="The four maintenance jobs, their cron schedules (UTC) and the last run of each.",
    ),
)
async def maintenance(request: Request) -> Response:
    return json_response(await admin.maintenance_status(context.deps(request)))


@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="Run a maintenance job now", tag="Admin", response=TaskAccepted, status=202,
        errors=(401, 403, 404, 503),
        # `/jobs/maintenance/{name}` had the shape of `/jobs/{task_id}/retry`: ambiguous to OpenAPI tools
        moved_from=("/jobs/maintenance/{name}",),
        links=(Link(name="GetTaskStatus", operation="get_task", parameters={"task_id": "$response.body#/task_id"},
                    description="Follow the maintenance task."),),
        description="Queue one of `cleanup_expired_sessions`, `archive_old_audit_logs`, "
        "`cleanup_token_blacklist`, `cleanup_temp_files`; follow it at `status_url` like any task "
        "(its result is the job's tagged result).",
    ),
)
async def run_maintenance(request: Request) -> Response:
    name = request.path_params["name"]
    context.audit(request, "EXECUTE", "maintenance", name, trigger="manual")
    accepted = await admin.trigger_maintenance(context.deps(request), name, owner_id=context.owner_id(request),
                                               request_id=context.request_id(request))
    return json_response(accepted, status=202, headers={"Location": accepted.status_url})


routes = [
    route("/jobs/maintenance", maintenance, ["GET"]),
    route("/jobs/maintenance/{name}", run_maintenance, ["POST"]),
    route("/jobs/maintenance/{name}/run", run_maintenance, ["POST"]),
    route("/jobs/{task_id}/retry", retry, ["POST"]),
]
