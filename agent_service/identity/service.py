"""Sign-in, token rotation, sign-out, and turning a credential into a Principal."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import Any, Literal

from agent_service.config import Settings
from agent_service.errors import Unauthorized
from agent_service.identity import cache as rows
from agent_service.identity import keys as key_material
from agent_service.identity import login_throttle
from agent_service.identity import repository as repo
from agent_service.identity.passwords import verify_password_async
from agent_service.identity.repository import UserRecord
from agent_service.identity.schemas import SCOPES, TIERS, USER_SCOPES, Me, Principal, StreamToken, TokenResponse
from agent_service.identity.tokens import (
    AuthKit,
    issue_access_token,
    issue_stream_token,
    resolve_secret,
    verify_stream_token,
)
from agent_service.kit.db import DatabaseUnavailable
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger

log = get_logger(__name__)
BAD_LOGIN = "Incorrect email or password."
TOUCH_EVERY_SECONDS = 60  # an API key's last_used_at is written at most this often


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def server_secret(settings: Settings) -> str:
    """The deployment's secret (JWT_SECRET, or development's generated one), for other domains
    that derive keys from it (audit archive tags)."""
    return resolve_secret(settings)


def user_scopes(user: UserRecord) -> tuple[str, ...]:
    return SCOPES if "admin" in user.roles else USER_SCOPES


def user_tier(deps: Deps, user: UserRecord) -> str:
    return user.tier or deps.settings.default_tier


async def token_budget(deps: Deps, user_id: str) -> tuple[str, int | None]:
    """The user's tier and own monthly token budget (None: the tier's), from the cached row; an
    external (OIDC) user has no row: the default tier's."""
    user = await rows.get_user(deps, user_id)
    if user is None:
        return deps.settings.default_tier, None
    return user_tier(deps, user), user.monthly_token_budget


def lower_tier(a: str, b: str) -> str:
    return a if TIERS.index(a) <= TIERS.index(b) else b


async def _issue(deps: Deps, user: UserRecord, family_id: str | None = None) -> TokenResponse:
    now = deps.clock()
    access, _ = issue_access_token(deps.settings, deps.part(AuthKit.of).secret, user_id=user.id, roles=user.roles,
                                   scopes=user_scopes(user), now=now)
    refresh = "rt_" + secrets.token_urlsafe(32)
    created = await repo.create_refresh(
        deps.db, token_id=uuid.uuid4().hex, family_id=family_id or uuid.uuid4().hex, user_id=user.id,
        token_hash=_hash(refresh), expires_at=now + timedelta(seconds=deps.settings.refresh_token_ttl), now=now,
    )
    if not created:  # the family was revoked (a replay) while this rotation was under way
        raise Unauthorized("The refresh token is invalid or expired.", code="invalid_refresh_token")
    return TokenResponse(access_token=access, refresh_token=refresh, expires_in=deps.settings.access_token_ttl)


async def login(deps: Deps, email: str, password: str) -> tuple[TokenResponse, UserRecord]:
    await login_throttle.check(deps, email)  # unknown emails too: the answer must not tell them apart
    user = await repo.user_by_email(deps.db, email)
    ok = await verify_password_async(password, user.password_hash if user else None)
    if not ok or user is None or not user.is_active:
        await login_throttle.failed(deps, email)
        raise Unauthorized(BAD_LOGIN, code="invalid_credentials")
    await login_throttle.succeeded(deps, email)
    return await _issue(deps, user), user


async def refresh(deps: Deps, token: str) -> tuple[TokenResponse, UserRecord]:
    now = deps.clock()
    record = await repo.refresh_by_hash(deps.db, _hash(token))
    invalid = Unauthorized("The refresh token is invalid or expired.", code="invalid_refresh_token")
    if record is None or record.revoked_at is not None or record.expires_at <= now:
        raise invalid
    if record.used_at is not None or not await repo.consume_refresh(deps.db, record.id, now=now):
        # a used token presented again means it was stolen (or replayed): end the whole family
        revoked = await repo.revoke_family(deps.db, record.family_id, now=now)
        log.warning("auth.refresh_reuse", family_id=record.family_id, revoked=revoked)
        raise invalid
    user = await repo.get_user(deps.db, record.user_id)
    if user is None or not user.is_active:
        raise invalid
    return await _issue(deps, user, family_id=record.family_id), user


async def logout(deps: Deps, principal: Principal, refresh_token: str | None) -> None:
    if principal.token_jti and principal.token_exp:
        await deps.part(AuthKit.of).verifier.revoke(principal.token_jti, principal.token_exp)
    if refresh_token:
        record = await repo.refresh_by_hash(deps.db, _hash(refresh_token))
        if record is not None and record.user_id == principal.user_id:
            await repo.revoke_family(deps.db, record.family_id, now=deps.clock())


async def principal_from_bearer(deps: Deps, token: str) -> Principal:
    claims = await deps.part(AuthKit.of).verifier.verify(token, now=deps.clock())
    if claims.get("iss") != deps.settings.jwt_issuer:
        return _external_principal(deps, claims)
    user = await rows.get_user(deps, str(claims["sub"]))
    if user is None or not user.is_active:
        raise Unauthorized("The account behind this token is not active.", code="inactive_user")
    return Principal(user_id=user.id, email=user.email, roles=user.roles, scopes=user_scopes(user),
                     tier=user_tier(deps, user), token_jti=str(claims["jti"]), token_exp=int(claims["exp"]))


async def principal_from_stream_token(deps: Deps, token: str, task_id: str) -> Principal:
    """The caller behind `?token=` on one task's events route: read-only, and only that task."""
    kit = deps.part(AuthKit.of)
    user_id = verify_stream_token(deps.settings, kit.secret, token, task_id=task_id, now=deps.clock())
    user = await rows.get_user(deps, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The account behind this token is not active.", code="inactive_user")
    return Principal(user_id=user.id, email=user.email, roles=user.roles, scopes=("tasks:read",),
                     tier=user_tier(deps, user), stream_task=task_id)


async def stream_token(deps: Deps, user_id: str, task_id: str) -> StreamToken:
    token, _ = issue_stream_token(deps.settings, deps.part(AuthKit.of).secret, user_id=user_id,
                                    task_id=task_id, now=deps.clock())
    return StreamToken(token=token, expires_in=deps.settings.stream_token_ttl, task_id=task_id)


def _external_principal(deps: Deps, claims: dict[str, Any]) -> Principal:
    # claims from another issuer may have any JSON type: only a list of strings counts as roles
    raw_roles, email = claims.get("roles"), claims.get("email")
    roles = tuple(r for r in raw_roles if r in ("user", "admin")) if isinstance(raw_roles, list) else ()
    roles = roles or ("user",)
    requested = str(claims.get("scope", "")).split()
    allowed = SCOPES if "admin" in roles else USER_SCOPES
    scopes = tuple(s for s in requested if s in allowed) or USER_SCOPES
    email = email if isinstance(email, str) and email else str(claims["sub"])
    return Principal(user_id=f"oidc:{claims['sub']}", email=email, roles=roles,
                     scopes=scopes, tier=deps.settings.default_tier,
                     token_jti=str(claims["jti"]), token_exp=int(claims["exp"]))


async def principal_from_api_key(deps: Deps, raw: str) -> Principal:
    invalid = Unauthorized("The API key is invalid, expired or revoked.", code="invalid_api_key")
    if not key_material.well_formed(raw):
        raise invalid
    key = await rows.key_by_hash(deps, key_material.hash_key(raw))
    now = deps.clock()
    if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        raise invalid
    user = await rows.get_user(deps, key.user_id)
    if user is None or not user.is_active:
        raise invalid
    if ((key.last_used_at is None or (now - key.last_used_at).total_seconds() >= TOUCH_EVERY_SECONDS)
            and rows.cache(deps).should_touch(key.id, TOUCH_EVERY_SECONDS)):
        # decided on the row already read (and, its copy being cached, on this process's last write),
        # so most requests take no write lock; and best effort: a busy or locked database must not
        # refuse a request that only reads
        with contextlib.suppress(DatabaseUnavailable):
            await repo.touch_key(deps.db, key.id, now=now, every_seconds=TOUCH_EVERY_SECONDS)
    # a key never holds more than its user may today: a demoted admin's keys lose `admin`/`audit:read`,
    # and a user moved to a lower tier takes every old key down with them
    allowed = user_scopes(user)
    return Principal(user_id=user.id, email=user.email, roles=user.roles,
                     scopes=tuple(s for s in key.scopes if s in allowed),
                     tier=lower_tier(key.tier, user_tier(deps, user)), api_key_id=key.id)


def me(principal: Principal) -> Me:
    method: Literal["jwt", "api_key", "oidc"] = (
        "api_key" if principal.api_key_id else ("oidc" if principal.user_id.startswith("oidc:") else "jwt")
    )
    return Me(user_id=principal.user_id, email=principal.email, roles=list(principal.roles),
              scopes=list(principal.scopes), tier=principal.tier, auth_method=method,
              api_key_id=principal.api_key_id)
