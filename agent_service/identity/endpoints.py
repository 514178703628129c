"""/api/v1/auth (token, refresh, logout, me), /api/v1/users (admin) and /api/v1/api-keys."""

from __future__ import annotations

from urllib.parse import parse_qs

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from agent_service.errors import BadRequest, ValidationFailed
from agent_service.identity import accounts
from agent_service.identity import service as identity
from agent_service.identity.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyPage,
    LogoutRequest,
    Me,
    PasswordForm,
    Principal,
    RefreshRequest,
    TokenRequest,
    TokenResponse,
    UserCreate,
    UserOut,
    UserPage,
    UserUpdate,
)
from agent_service.kit import context
from agent_service.kit.endpoint import Docs, Limits, Link, Public, Scoped, endpoint, route
from agent_service.kit.io import convert, json_response, read_body, read_json, read_query
from agent_service.kit.schemas import PageQuery

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
KEYS = "api_keys:manage"


def _principal(request: Request) -> Principal:
    found = context.caller(request)
    assert isinstance(found, Principal)  # the identity backend authenticates every request
    return found


async def _credentials(request: Request) -> TokenRequest:
    deps = context.deps(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return await read_json(request, TokenRequest, limit=deps.settings.max_body_bytes)
    raw = await read_body(request, 16_384)
    try:
        form = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The form body is malformed.", code="malformed_form") from None
    grant = form.get("grant_type", ["password"])[0]
    if grant != "password":
        raise ValidationFailed("Only the password grant is supported.",
                               errors=[{"path": "$.grant_type", "message": "Expected `password`"}])
    # OAuth2 calls the email `username`
    fields = {"email": form.get("username", [""])[0], "password": form.get("password", [""])[0]}
    return convert(fields, TokenRequest)


@endpoint(
    auth=Public(), limits=Limits(kind="login"),
    docs=Docs(
        summary="Sign in", tag="Authentication", request=TokenRequest, response=TokenResponse,
        errors=(400, 401, 415, 422), form=PasswordForm,
        description="Exchange email and password (JSON, or an OAuth2 password-grant form with `username`) "
        "for a short-lived access token and a single-use refresh token. Besides the per-IP limit, an account "
        "with LOGIN_FAILURES_BEFORE_DELAY failed sign-ins (from any address) is held back 1, 2, 4 … s after "
        "each further failure, up to LOGIN_FAILURE_DELAY_MAX (429 `login_throttled` with Retry-After).",
    ),
)
async def token(request: Request) -> Response:
    context.audit(request, "LOGIN", "auth")
    creds = await _credentials(request)
    context.audit(request, "LOGIN", "auth", email=creds.email)
    tokens, _ = await identity.login(context.deps(request), creds.email, creds.password)
    return json_response(tokens, headers=NO_STORE)


@endpoint(
    auth=Public(), limits=Limits(kind="login"),
    docs=Docs(
        summary="Rotate tokens", tag="Authentication", request=RefreshRequest, response=TokenResponse,
        errors=(400, 401, 415, 422),
        description="Trade a refresh token for a new pair. Each refresh token works once; presenting a used "
        "one revokes its whole family.",
    ),
)
async def refresh(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "LOGIN", "refresh_token")
    body = await read_json(request, RefreshRequest, limit=deps.settings.max_body_bytes)
    tokens, user = await identity.refresh(deps, body.refresh_token)
    context.audit(request, "LOGIN", "refresh_token", user.id, grant="refresh_token")
    return json_response(tokens, headers=NO_STORE)


@endpoint(
    auth=Scoped(),
    docs=Docs(
        summary="Sign out", tag="Authentication", request=LogoutRequest, status=204, errors=(400, 401, 422),
        body_required=False,
        description="Revoke the access token used for this call (on every web process at once) and, "
        "if given, the refresh token's family.",
    ),
)
async def logout(request: Request) -> Response:
    deps = context.deps(request)
    body = LogoutRequest()
    if await request.body():
        body = await read_json(request, LogoutRequest, limit=deps.settings.max_body_bytes)
    context.audit(request, "LOGOUT", "auth", revoked_refresh=bool(body.refresh_token))
    await identity.logout(deps, _principal(request), body.refresh_token)
    return Response(status_code=204)


@endpoint(
    auth=Scoped(),
    docs=Docs(
        summary="Who am I", tag="Authentication", response=Me, errors=(401,),
        description="The caller's identity, roles, scopes and tier; for an API key also its id.",
    ),
)
async def me(request: Request) -> Response:
    return json_response(identity.me(_principal(request)))




@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="Create a user", tag="Admin", request=UserCreate, response=UserOut, status=201,
        errors=(400, 401, 403, 409, 413, 415, 422),
        links=(Link(name="UpdateUser", operation="update_user", parameters={"user_id": "$response.body#/id"},
                    description="Change the new user's roles, tier or state."),),
        description="Admins only. Emails are unique regardless of case.",
    ),
)
async def create_user(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "CREATE", "user")
    body = await read_json(request, UserCreate, limit=deps.settings.max_body_bytes)
    out = await accounts.create_user(deps, body)
    context.audit(request, "CREATE", "user", out.id, email=out.email, roles=out.roles)
    return json_response(out, status=201, headers={"Location": f"/api/v1/users/{out.id}"})


@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="List users", tag="Admin", response=UserPage, query=PageQuery, errors=(401, 403, 422),
        description="Admins only. Newest first, paginated with `limit` and the opaque `cursor`.",
    ),
)
async def list_users(request: Request) -> Response:
    q = read_query(request, PageQuery)
    return json_response(await accounts.list_users(context.deps(request), limit=q.limit, cursor=q.cursor))


@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="Update a user", tag="Admin", request=UserUpdate, response=UserOut,
        errors=(400, 401, 403, 404, 413, 415, 422),
        description="Admins only: change name, roles, tier or the active flag. Deactivating a user "
        "stops their tokens and API keys at once.",
    ),
)
async def update_user(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "UPDATE", "user", request.path_params["user_id"])
    body = await read_json(request, UserUpdate, limit=deps.settings.max_body_bytes)
    context.audit(request, "UPDATE", "user", request.path_params["user_id"],
                  changes=msgspec.to_builtins(body))
    return json_response(await accounts.update_user(deps, request.path_params["user_id"], body))






@endpoint(
    auth=Scoped(KEYS),
    docs=Docs(
        summary="Create an API key", tag="API Keys", request=ApiKeyCreate, response=ApiKeyCreated, status=201,
        errors=(400, 401, 403, 409, 413, 415, 422),
        links=(
            Link(name="GetKey", operation="get_key", parameters={"key_id": "$response.body#/id"},
                 description="The new key's details."),
            Link(name="RotateKey", operation="rotate_key", parameters={"key_id": "$response.body#/id"},
                 description="Replace the new key by a fresh one."),
            Link(name="RevokeKey", operation="revoke_key", parameters={"key_id": "$response.body#/id"},
                 description="Revoke the new key."),
        ),
        description="The raw key (`sk_live_…`) is in this response only; the server keeps a hash. A key "
        "cannot hold a scope its creator lacks nor a tier above the creator's current one; only admins grant "
        "`admin` or `audit:read`. Rate limits are charged to the user, whichever key is used, and a user holds "
        "at most MAX_API_KEYS_PER_USER live keys (409 `api_key_limit`).",
    ),
)
async def create_key(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "CREATE", "api_key")
    body = await read_json(request, ApiKeyCreate, limit=deps.settings.max_body_bytes)
    created = await accounts.create_key(deps, _principal(request), body)
    context.audit(request, "CREATE", "api_key", created.id, name=created.name, scopes=created.scopes, tier=created.tier)
    return json_response(
        created, status=201, headers={"Location": f"/api/v1/api-keys/{created.id}", "Cache-Control": "no-store"}
    )


@endpoint(
    auth=Scoped(KEYS),
    docs=Docs(
        summary="List my API keys", tag="API Keys", response=ApiKeyPage, query=PageQuery, errors=(401, 403, 422),
        links=(Link(name="GetFirstKey", operation="get_key", parameters={"key_id": "$response.body#/items/0/id"},
                    description="The newest key of the page."),),
        description="Newest first; the raw keys are never shown again, only their display prefix.",
    ),
)
async def list_keys(request: Request) -> Response:
    q = read_query(request, PageQuery)
    page = await accounts.list_keys(context.deps(request), _principal(request), limit=q.limit, cursor=q.cursor)
    return json_response(page)


@endpoint(
    auth=Scoped(KEYS),
    docs=Docs(
        summary="Get an API key", tag="API Keys", response=ApiKeyOut, errors=(401, 403, 404),
        description="One of the caller's keys (admins: anyone's). Someone else's key is a 404.",
    ),
)
async def get_key(request: Request) -> Response:
    key = await accounts.get_key(context.deps(request), _principal(request), request.path_params["key_id"])
    return json_response(accounts.key_out(key))


@endpoint(
    auth=Scoped(KEYS),
    docs=Docs(
        summary="Revoke an API key", tag="API Keys", status=204, errors=(401, 403, 404),
        description="The key stops working at once. Revoking twice is harmless.",
    ),
)
async def revoke_key(request: Request) -> Response:
    context.audit(request, "DELETE", "api_key", request.path_params["key_id"])
    await accounts.revoke_key(context.deps(request), _principal(request), request.path_params["key_id"])
    return Response(status_code=204)


@endpoint(
    auth=Scoped(KEYS),
    docs=Docs(
        summary="Rotate an API key", tag="API Keys", response=ApiKeyCreated, status=201, errors=(401, 403, 404),
        description="Issue a replacement with the same name, scopes and tier (lowered to the owner's current "
        "tier); the old key stops working. Only the key's owner may rotate it: an admin may revoke someone "
        "else's key, but never receive its replacement (403 `cannot_rotate_others_key`).",
    ),
)
async def rotate_key(request: Request) -> Response:
    context.audit(request, "UPDATE", "api_key", request.path_params["key_id"], rotated=True)
    created = await accounts.rotate_key(
        context.deps(request), _principal(request), request.path_params["key_id"]
    )
    context.audit(request, "UPDATE", "api_key", request.path_params["key_id"], rotated_to=created.id)
    return json_response(created, status=201, headers={"Cache-Control": "no-store"})


routes = [
    route("/auth/token", token, ["POST"]),
    route("/auth/refresh", refresh, ["POST"]),
    route("/auth/logout", logout, ["POST"]),
    route("/auth/me", me, ["GET"]),
    route("/users", create_user, ["POST"]),
    route("/users", list_users, ["GET"]),
    route("/users/{user_id}", update_user, ["PATCH"]),
    route("/api-keys", create_key, ["POST"]),
    route("/api-keys", list_keys, ["GET"]),
    route("/api-keys/{key_id}", get_key, ["GET"]),
    route("/api-keys/{key_id}", revoke_key, ["DELETE"]),
    route("/api-keys/{key_id}/rotate", rotate_key, ["POST"]),
]
