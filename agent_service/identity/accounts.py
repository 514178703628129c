"""Admin management of users, and the first-admin bootstrap used by `create-user` and `dev`."""

from __future__ import annotations

import uuid
from datetime import timedelta

from agent_service.errors import Conflict, Forbidden, NotFound
from agent_service.identity import cache as rows
from agent_service.identity import keys as key_material
from agent_service.identity import repository as repo
from agent_service.identity.passwords import hash_password_async
from agent_service.identity.repository import ApiKeyRecord, UserRecord
from agent_service.identity.schemas import (
    ADMIN_ONLY_SCOPES,
    TIERS,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    ApiKeyPage,
    Principal,
    UserCreate,
    UserOut,
    UserPage,
    UserUpdate,
)
from agent_service.identity.service import lower_tier
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger

log = get_logger(__name__)


def user_out(deps: Deps, user: UserRecord) -> UserOut:
    return UserOut(id=user.id, email=user.email, name=user.name, roles=list(user.roles),
                   tier=user.tier or deps.settings.default_tier, is_active=user.is_active,
                   created_at=user.created_at, updated_at=user.updated_at,
                   monthly_token_budget=user.monthly_token_budget)


async def create_user(deps: Deps, body: UserCreate) -> UserOut:
    user_id = uuid.uuid4().hex
    roles = tuple(dict.fromkeys(body.roles))
    created = await repo.create_user(
        deps.db, user_id=user_id, email=body.email, name=body.name,
        password_hash=await hash_password_async(body.password), roles=roles, tier=body.tier, now=deps.clock(),
    )
    if not created:
        raise Conflict("A user with this email already exists.", code="email_taken")
    user = await repo.get_user(deps.db, user_id)
    assert user is not None
    return user_out(deps, user)


async def ensure_bootstrap_admin(deps: Deps) -> bool:
    """BOOTSTRAP_ADMIN_EMAIL/PASSWORD: the first admin of a fresh deployment, without a shell on the
    box. Idempotent, also across processes starting at once (the unique email decides); True if
    this call created it. The password is neither logged nor kept anywhere but as its hash."""
    s = deps.settings
    if not (s.bootstrap_admin_email and s.bootstrap_admin_password):
        return False
    if await repo.user_by_email(deps.db, s.bootstrap_admin_email) is not None:
        return False
    body = UserCreate(email=s.bootstrap_admin_email, password=s.bootstrap_admin_password,
                      roles=["user", "admin"], name="Bootstrap admin", tier="enterprise")
    try:
        await create_user(deps, body)
    except Conflict:
        return False  # another process won the race
    log.info("bootstrap.admin_created")
    return True


async def list_users(deps: Deps, *, limit: int, cursor: str | None) -> UserPage:
    page, nxt = await repo.list_users(deps.db, limit=limit, cursor=cursor)
    return UserPage(items=[user_out(deps, u) for u in page], next_cursor=nxt)


async def get_user(deps: Deps, user_id: str) -> UserRecord:
    user = await repo.get_user(deps.db, user_id) if len(user_id) <= 64 else None
    if user is None:
        raise NotFound(f"No user with id {user_id!r}.", code="user_not_found")
    return user


async def update_user(deps: Deps, user_id: str, body: UserUpdate) -> UserOut:
    await get_user(deps, user_id)
    now = deps.clock()
    await repo.update_user(
        deps.db, user_id, now=now, roles=tuple(dict.fromkeys(body.roles)) if body.roles else None,
        is_active=body.is_active, tier=body.tier, name=body.name,
        monthly_token_budget=body.monthly_token_budget if (body.monthly_token_budget or 0) >= 0 else None,
        clear_budget=body.monthly_token_budget == -1,
    )
    await rows.invalidate_user(deps, user_id)  # every web process reads the new row from now on
    if body.is_active is False:
        # a deactivated user's refresh tokens die with the account; access tokens and keys are
        # refused at once: the invalidation above reaches every web process's cached row (identity/cache.py)
        await repo.revoke_user_refresh(deps.db, user_id, now=now)
    return user_out(deps, await get_user(deps, user_id))


def key_out(key: ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(id=key.id, user_id=key.user_id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
                     tier=key.tier, created_at=key.created_at, expires_at=key.expires_at,
                     last_used_at=key.last_used_at, revoked_at=key.revoked_at)


def _check_grant(principal: Principal, scopes: list[str], tier: str) -> None:
    """A key never holds more than its creator: no scope they lack, no tier above theirs (their
    current one: a key's effective tier is already the lower of its own and its user's)."""
    if principal.user_id.startswith("oidc:"):
        raise Forbidden("API keys belong to accounts of this service; an external (OIDC) sign-in cannot mint "
                        "them. Use the external token itself, or an account created here.", code="external_principal")
    if not principal.is_admin:
        elevated = sorted(set(scopes) & ADMIN_ONLY_SCOPES)
        if elevated:
            raise Forbidden(f"Only admins may grant {', '.join(elevated)}.", code="scope_not_grantable")
    if TIERS.index(tier) > TIERS.index(principal.tier):
        raise Forbidden(f"Your tier ({principal.tier}) cannot mint a {tier} key.", code="tier_not_grantable")
    missing = sorted(s for s in set(scopes) if not principal.has_scope(s))
    if missing:
        raise Forbidden(f"You cannot grant scopes you do not hold: {', '.join(missing)}.", code="scope_not_grantable")


async def _mint(deps: Deps, *, user_id: str, name: str, scopes: tuple[str, ...], tier: str,
                expires_in_days: int | None, capped: bool = True) -> ApiKeyCreated:
    raw = key_material.generate()
    key_id = uuid.uuid4().hex
    now = deps.clock()
    cap = deps.settings.max_api_keys_per_user
    created = await repo.create_key(
        deps.db, key_id=key_id, user_id=user_id, name=name, key_hash=key_material.hash_key(raw),
        prefix=key_material.display_prefix(raw), scopes=scopes, tier=tier,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None, now=now,
        max_live=cap if capped else None,
    )
    if not created:  # quotas are per user, but a key cap keeps the key table and its audit readable
        raise Conflict(f"You already hold {cap} live API keys (MAX_API_KEYS_PER_USER); revoke one first.",
                       code="api_key_limit")
    record = await repo.get_key(deps.db, key_id)
    assert record is not None
    return ApiKeyCreated(**{f: getattr(key_out(record), f) for f in ApiKeyOut.__struct_fields__}, key=raw)


async def create_key(deps: Deps, principal: Principal, body: ApiKeyCreate) -> ApiKeyCreated:
    scopes: list[str] = list(dict.fromkeys(body.scopes))
    _check_grant(principal, scopes, body.tier)
    return await _mint(deps, user_id=principal.user_id, name=body.name, scopes=tuple(scopes), tier=body.tier,
                       expires_in_days=body.expires_in_days)


async def bootstrap_key(deps: Deps, user_id: str, *, name: str, scopes: tuple[str, ...], tier: str) -> str:
    """For the CLI and `dev`: mint without a calling principal. Returns the raw key."""
    return (await _mint(deps, user_id=user_id, name=name, scopes=scopes, tier=tier, expires_in_days=None,
                        capped=False)).key


async def get_key(deps: Deps, principal: Principal, key_id: str) -> ApiKeyRecord:
    key = await repo.get_key(deps.db, key_id) if len(key_id) <= 64 else None
    if key is None or (key.user_id != principal.user_id and not principal.is_admin):
        raise NotFound(f"No API key with id {key_id!r}.", code="api_key_not_found")
    return key


async def list_keys(deps: Deps, principal: Principal, *, limit: int, cursor: str | None) -> ApiKeyPage:
    page, nxt = await repo.list_keys(deps.db, principal.user_id, limit=limit, cursor=cursor)
    return ApiKeyPage(items=[key_out(k) for k in page], next_cursor=nxt)


async def revoke_key(deps: Deps, principal: Principal, key_id: str) -> ApiKeyRecord:
    key = await get_key(deps, principal, key_id)
    await repo.revoke_key(deps.db, key.id, now=deps.clock())
    await rows.invalidate_key(deps, key.id)
    return key


async def rotate_key(deps: Deps, principal: Principal, key_id: str) -> ApiKeyCreated:
    """A new key with the same name, scopes, tier and remaining lifetime; the old one stops at once."""
    old = await get_key(deps, principal, key_id)
    if old.revoked_at is not None:
        raise NotFound(f"No API key with id {key_id!r}.", code="api_key_not_found")
    if old.user_id != principal.user_id:
        # the caller would receive the new raw key: a secret of another user's
        raise Forbidden("Admins may revoke another user's key but not rotate it: the new key would be shown to "
                        "you. Revoke it and let its owner mint a new one.", code="cannot_rotate_others_key")
    # the caller receives the new raw key: the same minting rules as create (no scope they lack)
    tier = lower_tier(old.tier, principal.tier)  # a downgraded user's rotated key comes down too
    _check_grant(principal, list(old.scopes), tier)
    await repo.revoke_key(deps.db, old.id, now=deps.clock())
    await rows.invalidate_key(deps, old.id)
    days = None
    if old.expires_at is not None:
        days = max(1, (old.expires_at - deps.clock()).days)
    # the old key is revoked, so the count is back below the cap: a rotation is never refused by it
    return await _mint(deps, user_id=old.user_id, name=old.name, scopes=old.scopes, tier=tier,
                       expires_in_days=days, capped=False)
