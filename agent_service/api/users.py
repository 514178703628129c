"""/api/v1/users: admin management of accounts."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from agent_service.api import context
from agent_service.api.docs import operation
from agent_service.api.io import json_response, read_json, read_query
from agent_service.api.routing import route
from agent_service.schemas.auth import UserCreate, UserOut, UserPage, UserUpdate
from agent_service.schemas.common import PageQuery
from agent_service.services import users


@operation(summary="Create a user", tag="Admin", request=UserCreate, response=UserOut, status=201, scope="admin",
           errors=(400, 401, 403, 409, 413, 415, 422),
           description="Admins only. Emails are unique regardless of case.")
async def create_user(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "CREATE", "user")
    body = await read_json(request, UserCreate, limit=deps.settings.max_body_bytes)
    out = await users.create_user(deps, body)
    context.audit(request, "CREATE", "user", out.id, email=out.email, roles=out.roles)
    return json_response(out, status=201, headers={"Location": f"/api/v1/users/{out.id}"})


@operation(summary="List users", tag="Admin", response=UserPage, query=PageQuery, scope="admin", errors=(401, 403, 422),
           description="Admins only. Newest first, paginated with `limit` and the opaque `cursor`.")
async def list_users(request: Request) -> Response:
    q = read_query(request, PageQuery)
    return json_response(await users.list_users(context.deps(request), limit=q.limit, cursor=q.cursor))


@operation(summary="Update a user", tag="Admin", request=UserUpdate, response=UserOut, scope="admin",
           errors=(400, 401, 403, 404, 413, 415, 422),
           description="Admins only: change name, roles, tier or the active flag. Deactivating a user "
                       "stops their tokens and API keys at once.")
async def update_user(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "UPDATE", "user", request.path_params["user_id"])
    body = await read_json(request, UserUpdate, limit=deps.settings.max_body_bytes)
    context.audit(request, "UPDATE", "user", request.path_params["user_id"],
                  changes=msgspec.to_builtins(body))
    return json_response(await users.update_user(deps, request.path_params["user_id"], body))


routes = [
    route("/users", create_user, ["POST"]),
    route("/users", list_users, ["GET"]),
    route("/users/{user_id}", update_user, ["PATCH"]),
]
