"""/api/v1/auth: token (JSON or OAuth2 password form), refresh, logout, me."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from agent_service.api import context
from agent_service.api.docs import operation
from agent_service.api.io import convert, json_response, read_body, read_json
from agent_service.api.routing import route
from agent_service.errors import BadRequest, ValidationFailed
from agent_service.schemas.auth import LogoutRequest, Me, RefreshRequest, TokenRequest, TokenResponse
from agent_service.services import identity

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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


@operation(summary="Sign in", tag="Authentication", request=TokenRequest, response=TokenResponse, public=True,
           rate_limit="login",
           errors=(400, 401, 415, 422),
           description="Exchange email and password (JSON, or an OAuth2 password-grant form with `username`) "
                       "for a short-lived access token and a single-use refresh token.")
async def token(request: Request) -> Response:
    context.audit(request, "LOGIN", "auth")
    creds = await _credentials(request)
    context.audit(request, "LOGIN", "auth", email=creds.email)
    tokens, _ = await identity.login(context.deps(request), creds.email, creds.password)
    return json_response(tokens, headers=NO_STORE)


@operation(summary="Rotate tokens", tag="Authentication", request=RefreshRequest, response=TokenResponse,
           public=True, rate_limit="login", errors=(400, 401, 415, 422),
           description="Trade a refresh token for a new pair. Each refresh token works once; presenting a used "
                       "one revokes its whole family.")
async def refresh(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "LOGIN", "refresh_token")
    body = await read_json(request, RefreshRequest, limit=deps.settings.max_body_bytes)
    tokens, user = await identity.refresh(deps, body.refresh_token)
    context.audit(request, "LOGIN", "refresh_token", user.id, grant="refresh_token")
    return json_response(tokens, headers=NO_STORE)


@operation(summary="Sign out", tag="Authentication", request=LogoutRequest, status=204, errors=(400, 401, 422),
           description="Revoke the access token used for this call (on every web process at once) and, "
                       "if given, the refresh token's family.")
async def logout(request: Request) -> Response:
    deps = context.deps(request)
    body = LogoutRequest()
    if await request.body():
        body = await read_json(request, LogoutRequest, limit=deps.settings.max_body_bytes)
    context.audit(request, "LOGOUT", "auth", revoked_refresh=bool(body.refresh_token))
    await identity.logout(deps, context.principal(request), body.refresh_token)
    return Response(status_code=204)


@operation(summary="Who am I", tag="Authentication", response=Me, errors=(401,),
           description="The caller's identity, roles, scopes and tier; for an API key also its id.")
async def me(request: Request) -> Response:
    return json_response(identity.me(context.principal(request)))


routes = [
    route("/auth/token", token, ["POST"]),
    route("/auth/refresh", refresh, ["POST"]),
    route("/auth/logout", logout, ["POST"]),
    route("/auth/me", me, ["GET"]),
]
