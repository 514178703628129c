"""/api/v1/agents/{agent_id}/invoke-batch and /api/v1/batches: queue many invocations at once,
then follow, list and cancel the batch."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import api_limits, context
from agent_service.kit.endpoint import Docs, Link, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_json, read_query
from agent_service.tasks import batches
from agent_service.tasks.batch_schemas import BatchAccepted, BatchPage, BatchQuery, BatchRequest, BatchStatus
from agent_service.tasks.endpoints import NO_STORE, _idempotency_key


@endpoint(
    auth=Scoped("agents:invoke"),
    docs=Docs(
        summary="Queue a batch of agent invocations", tag="Background Jobs", request=BatchRequest,
        response=BatchAccepted, status=202, errors=(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
        headers=("Idempotency-Key",),
        links=(Link(name="GetBatch", operation="get_batch", parameters={"batch_id": "$response.body#/batch_id"},
                    description="The batch's counts, progress and state."),),
        description="Each of `items` is an invoke-async body. All are checked first: one bad item refuses the "
        "whole batch (422 naming it, `$.items[i]…`) and nothing is queued. A batch of N counts as N requests "
        "against the caller's rate limit. The answer gives the task ids in the order of `items`; each task is "
        "an ordinary task (status, events, cancel). A `webhook` receives `batch.completed` once every task "
        "has finished (signed; its secret is in this answer only). `Idempotency-Key` works as for "
        "invoke-async.",
    ),
)
async def invoke_batch(request: Request) -> Response:
    deps = context.deps(request)
    agent_id = request.path_params.get("agent_id") or deps.settings.default_agent
    body = await read_json(request, BatchRequest, limit=deps.settings.batch_max_body_bytes)
    for item in body.items:
        context.require_session_scope(request, item.session_id)
    caller = context.caller(request)

    async def charge(n: int) -> None:
        await api_limits.charge(request, caller, n - 1)

    accepted, replayed = await batches.submit_batch(
        deps, agent_id, body, owner_id=caller.user_id, request_id=context.request_id(request),
        idempotency_key=_idempotency_key(request), tier=caller.tier, is_admin=caller.is_admin, charge=charge,
        api_key_id=getattr(caller, "api_key_id", None),
    )
    context.audit(request, "EXECUTE", "agent", agent_id, mode="batch", batch_id=accepted.batch_id,
                  size=len(accepted.task_ids), replayed=replayed)
    headers = {"Location": accepted.status_url, **({"Idempotent-Replayed": "true"} if replayed else {})}
    return json_response(accepted, status=202, headers=headers)


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="Get a batch", tag="Background Jobs", response=BatchStatus, errors=(401, 403, 404),
        description="How many of the batch's tasks are in each state, its overall progress (0-100) and its state: "
        "`running`, `completed` (every task finished) or `cancelled`. Someone else's batch is a 404.",
    ),
)
async def get_batch(request: Request) -> Response:
    status = await batches.get_status(context.deps(request), request.path_params["batch_id"],
                                      owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    return json_response(status, headers=NO_STORE)


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="List batches", tag="Background Jobs", response=BatchPage, query=BatchQuery, errors=(401, 403, 422),
        description="My batches, newest first. Paginate with `limit` and the opaque `cursor`.",
    ),
)
async def list_batches(request: Request) -> Response:
    page = await batches.list_batches(context.deps(request), read_query(request, BatchQuery),
                                      owner_id=context.owner_id(request))
    return json_response(page, headers=NO_STORE)


@endpoint(
    auth=Scoped("tasks:cancel"),
    docs=Docs(
        summary="Cancel a batch", tag="Background Jobs", response=BatchStatus, errors=(401, 403, 404, 503),
        description="Cancels every unfinished task of the batch (queued ones at once, running ones within a "
        "second); finished tasks keep their results. Cancelling again changes nothing.",
    ),
)
async def cancel_batch(request: Request) -> Response:
    context.audit(request, "CANCEL", "batch", request.path_params["batch_id"])
    status = await batches.cancel(context.deps(request), request.path_params["batch_id"],
                                  owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    return json_response(status, headers=NO_STORE)


routes = [
    route("/agents/{agent_id}/invoke-batch", invoke_batch, ["POST"]),
    route("/batches", list_batches, ["GET"]),
    route("/batches/{batch_id}", get_batch, ["GET"]),
    route("/batches/{batch_id}/cancel", cancel_batch, ["POST"]),
]
