"""/api/v1/agents/tasks: the status of a background task."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.api import context
from agent_service.api.docs import operation
from agent_service.api.io import json_response
from agent_service.api.routing import route
from agent_service.schemas.tasks import TaskStatus
from agent_service.services import tasks


@operation(summary="Get a task's status", tag="Background Jobs", response=TaskStatus, errors=(401, 403, 404, 503),
           scope="tasks:read",
           description="State (`PENDING`…`REVOKED`), human status, progress 0-100, the result once "
                       "`SUCCESS` (kept JOB_RESULT_TTL seconds) and the error once `FAILURE`. Someone else's task is a 404.")
async def get_task(request: Request) -> Response:
    status = await tasks.get_status(
        context.deps(request), request.path_params["task_id"],
        owner_id=context.owner_id(request), is_admin=context.is_admin(request),
    )
    return json_response(status, headers={"Cache-Control": "no-store"})


routes = [route("/agents/tasks/{task_id}", get_task, ["GET"])]
