"""/api/v1/api-keys: mint, list, get, revoke and rotate the caller's API keys."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.api import context
from agent_service.api.docs import operation
from agent_service.api.io import json_response, read_json, read_query
from agent_service.api.routing import route
from agent_service.schemas.auth import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage
from agent_service.schemas.common import PageQuery
from agent_service.services import api_keys

SCOPE = "api_keys:manage"


@operation(
    summary="Create an API key",
    tag="API Keys",
    request=ApiKeyCreate,
    response=ApiKeyCreated,
    status=201,
    scope=SCOPE,
    errors=(400, 401, 403, 413, 415, 422),
    description="The raw key (`sk_live_…`) is in this response only; the server keeps a hash. A key "
    "cannot hold a scope its creator lacks; only admins grant `admin` or `audit:read`.",
)
async def create_key(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "CREATE", "api_key")
    body = await read_json(request, ApiKeyCreate, limit=deps.settings.max_body_bytes)
    created = await api_keys.create_key(deps, context.principal(request), body)
    context.audit(request, "CREATE", "api_key", created.id, name=created.name, scopes=created.scopes, tier=created.tier)
    return json_response(
        created, status=201, headers={"Location": f"/api/v1/api-keys/{created.id}", "Cache-Control": "no-store"}
    )


@operation(
    summary="List my API keys",
    tag="API Keys",
    response=ApiKeyPage,
    query=PageQuery,
    scope=SCOPE,
    errors=(401, 403, 422),
    description="Newest first; the raw keys are never shown again, only their display prefix.",
)
async def list_keys(request: Request) -> Response:
    q = read_query(request, PageQuery)
    page = await api_keys.list_keys(context.deps(request), context.principal(request), limit=q.limit, cursor=q.cursor)
    return json_response(page)


@operation(
    summary="Get an API key",
    tag="API Keys",
    response=ApiKeyOut,
    scope=SCOPE,
    errors=(401, 403, 404),
    description="One of the caller's keys (admins: anyone's). Someone else's key is a 404.",
)
async def get_key(request: Request) -> Response:
    key = await api_keys.get_key(context.deps(request), context.principal(request), request.path_params["key_id"])
    return json_response(api_keys.to_out(key))


@operation(
    summary="Revoke an API key",
    tag="API Keys",
    status=204,
    scope=SCOPE,
    errors=(401, 403, 404),
    description="The key stops working at once. Revoking twice is harmless.",
)
async def revoke_key(request: Request) -> Response:
    context.audit(request, "DELETE", "api_key", request.path_params["key_id"])
    await api_keys.revoke_key(context.deps(request), context.principal(request), request.path_params["key_id"])
    return Response(status_code=204)


@operation(
    summary="Rotate an API key",
    tag="API Keys",
    response=ApiKeyCreated,
    status=201,
    scope=SCOPE,
    errors=(401, 403, 404),
    description="Issue a replacement with the same name, scopes and tier; the old key stops working.",
)
async def rotate_key(request: Request) -> Response:
    context.audit(request, "UPDATE", "api_key", request.path_params["key_id"], rotated=True)
    created = await api_keys.rotate_key(
        context.deps(request), context.principal(request), request.path_params["key_id"]
    )
    context.audit(request, "UPDATE", "api_key", request.path_params["key_id"], rotated_to=created.id)
    return json_response(created, status=201, headers={"Cache-Control": "no-store"})


routes = [
    route("/api-keys", create_key, ["POST"]),
    route("/api-keys", list_keys, ["GET"]),
    route("/api-keys/{key_id}", get_key, ["GET"]),
    route("/api-keys/{key_id}", revoke_key, ["DELETE"]),
    route("/api-keys/{key_id}/rotate", rotate_key, ["POST"]),
]
