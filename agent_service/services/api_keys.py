"""API keys: mint (raw key shown once), list, get, revoke, rotate. Someone else's key is a 404."""

from __future__ import annotations

import uuid
from datetime import timedelta

from agent_service.auth import api_keys as key_material
from agent_service.auth.principal import ADMIN_ONLY_SCOPES, TIERS, Principal
from agent_service.clock import iso
from agent_service.errors import Forbidden, NotFound
from agent_service.schemas.auth import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, ApiKeyPage
from agent_service.services.deps import Deps
from agent_service.storage import api_keys as key_store
from agent_service.storage import cursor as cursors
from agent_service.storage.api_keys import ApiKeyRecord


def to_out(key: ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(id=key.id, user_id=key.user_id, name=key.name, prefix=key.prefix, scopes=list(key.scopes),
                     tier=key.tier, created_at=key.created_at, expires_at=key.expires_at,
                     last_used_at=key.last_used_at, revoked_at=key.revoked_at)


def _check_grant(principal: Principal, scopes: list[str], tier: str) -> None:
    """A key never holds more than its creator: no scope they lack, no tier above theirs."""
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
                expires_in_days: int | None) -> ApiKeyCreated:
    raw = key_material.generate()
    key_id = uuid.uuid4().hex
    now = deps.clock()
    await key_store.create(
        deps.db, key_id=key_id, user_id=user_id, name=name, key_hash=key_material.hash_key(raw),
        prefix=key_material.display_prefix(raw), scopes=scopes, tier=tier,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None, now=now,
    )
    record = await key_store.get(deps.db, key_id)
    assert record is not None
    return ApiKeyCreated(**{f: getattr(to_out(record), f) for f in ApiKeyOut.__struct_fields__}, key=raw)


async def create_key(deps: Deps, principal: Principal, body: ApiKeyCreate) -> ApiKeyCreated:
    scopes: list[str] = list(dict.fromkeys(body.scopes))
    _check_grant(principal, scopes, body.tier)
    return await _mint(deps, user_id=principal.user_id, name=body.name, scopes=tuple(scopes), tier=body.tier,
                       expires_in_days=body.expires_in_days)


async def bootstrap_key(deps: Deps, user_id: str, *, name: str, scopes: tuple[str, ...], tier: str) -> str:
    """For the CLI and `dev`: mint without a calling principal. Returns the raw key."""
    return (await _mint(deps, user_id=user_id, name=name, scopes=scopes, tier=tier, expires_in_days=None)).key


async def get_key(deps: Deps, principal: Principal, key_id: str) -> ApiKeyRecord:
    key = await key_store.get(deps.db, key_id) if len(key_id) <= 64 else None
    if key is None or (key.user_id != principal.user_id and not principal.is_admin):
        raise NotFound(f"No API key with id {key_id!r}.", code="api_key_not_found")
    return key


async def list_keys(deps: Deps, principal: Principal, *, limit: int, cursor: str | None) -> ApiKeyPage:
    rows = await key_store.list_for(deps.db, principal.user_id, limit=limit + 1, before=cursors.before_of(cursor))
    page, nxt = cursors.page_of(rows, limit, lambda k: (iso(k.created_at) or "", k.id))
    return ApiKeyPage(items=[to_out(k) for k in page], next_cursor=nxt)


async def revoke_key(deps: Deps, principal: Principal, key_id: str) -> ApiKeyRecord:
    key = await get_key(deps, principal, key_id)
    await key_store.revoke(deps.db, key.id, now=deps.clock())
    return key


async def rotate_key(deps: Deps, principal: Principal, key_id: str) -> ApiKeyCreated:
    """A new key with the same name, scopes, tier and remaining lifetime; the old one stops at once."""
    old = await get_key(deps, principal, key_id)
    if old.revoked_at is not None:
        raise NotFound(f"No API key with id {key_id!r}.", code="api_key_not_found")
    # the caller receives the new raw key: the same minting rules as create (no scope they lack)
    _check_grant(principal, list(old.scopes), old.tier)
    await key_store.revoke(deps.db, old.id, now=deps.clock())
    days = None
    if old.expires_at is not None:
        days = max(1, (old.expires_at - deps.clock()).days)
    return await _mint(deps, user_id=old.user_id, name=old.name, scopes=old.scopes, tier=old.tier,
                       expires_in_days=days)
