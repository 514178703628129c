"""Create users and API keys without HTTP: for the CLI, `dev`'s first start, and scripts.

An entry-point module: it may import anything; only entry points and scripts import it.
"""

from __future__ import annotations

import secrets

import msgspec

from agent_service.config import Settings
from agent_service.errors import Conflict, NotFound
from agent_service.identity import accounts as api_keys
from agent_service.identity import accounts as users
from agent_service.identity import repository as repo
from agent_service.identity.schemas import SCOPES, USER_SCOPES, UserCreate
from agent_service.kit.deps import Deps, open_deps


async def _deps(settings: Settings) -> Deps:
    # no Redis needed: a lazily-connecting pool is never used here
    return await open_deps(msgspec.structs.replace(settings, redis_url=settings.redis_url or "redis://127.0.0.1:1/0"))


async def create_user(settings: Settings, *, email: str, password: str, admin: bool, name: str = "",
                      tier: str | None = None) -> str:
    deps = await _deps(settings)
    try:
        roles = ["user", "admin"] if admin else ["user"]
        out = await users.create_user(deps, UserCreate(email=email, password=password, name=name,
                                                      roles=roles, tier=tier))  # type: ignore[arg-type]
        return out.id
    finally:
        await deps.aclose()


async def create_api_key(settings: Settings, *, email: str, name: str, scopes: tuple[str, ...] | None = None,
                         tier: str | None = None) -> str:
    deps = await _deps(settings)
    try:
        user = await repo.user_by_email(deps.db, email)
        if user is None:
            raise NotFound(f"No user with email {email!r}.")
        allowed = SCOPES if "admin" in user.roles else USER_SCOPES
        granted = scopes or allowed
        if not set(granted) <= set(allowed):
            raise Conflict(f"{email} cannot hold {sorted(set(granted) - set(allowed))}.")
        return await api_keys.bootstrap_key(deps, user.id, name=name, scopes=tuple(granted),
                                            tier=tier or user.tier or settings.default_tier)
    finally:
        await deps.aclose()


async def ensure_dev_admin(settings: Settings) -> tuple[str, str, str] | None:
    """On a fresh database: an admin with a random password and an API key. None if users exist."""
    deps = await _deps(settings)
    try:
        if await repo.count_users(deps.db) > 0:
            return None
    finally:
        await deps.aclose()
    password = secrets.token_urlsafe(12)
    await create_user(settings, email=settings.dev_admin_email, password=password, admin=True, name="Local admin",
                      tier="enterprise")
    key = await create_api_key(settings, email=settings.dev_admin_email, name="dev")
    return settings.dev_admin_email, password, key
