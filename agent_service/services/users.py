"""Admin management of users, and the first-admin bootstrap used by `create-user` and `dev`."""

from __future__ import annotations

import uuid

from agent_service.auth.passwords import hash_password_async
from agent_service.clock import iso
from agent_service.errors import Conflict, NotFound
from agent_service.schemas.auth import UserCreate, UserOut, UserPage, UserUpdate
from agent_service.services.deps import Deps
from agent_service.storage import cursor as cursors
from agent_service.storage import refresh_tokens as refresh_store
from agent_service.storage import users as user_store
from agent_service.storage.users import UserRecord


def to_out(deps: Deps, user: UserRecord) -> UserOut:
    return UserOut(id=user.id, email=user.email, name=user.name, roles=list(user.roles),
                   tier=user.tier or deps.settings.default_tier, is_active=user.is_active,
                   created_at=user.created_at, updated_at=user.updated_at)


async def create_user(deps: Deps, body: UserCreate) -> UserOut:
    user_id = uuid.uuid4().hex
    roles = tuple(dict.fromkeys(body.roles))
    created = await user_store.create(
        deps.db, user_id=user_id, email=body.email, name=body.name,
        password_hash=await hash_password_async(body.password), roles=roles, tier=body.tier, now=deps.clock(),
    )
    if not created:
        raise Conflict("A user with this email already exists.", code="email_taken")
    user = await user_store.get(deps.db, user_id)
    assert user is not None
    return to_out(deps, user)


async def list_users(deps: Deps, *, limit: int, cursor: str | None) -> UserPage:
    rows = await user_store.list_page(deps.db, limit=limit + 1, before=cursors.before_of(cursor))
    page, nxt = cursors.page_of(rows, limit, lambda u: (iso(u.created_at) or "", u.id))
    return UserPage(items=[to_out(deps, u) for u in page], next_cursor=nxt)


async def get_user(deps: Deps, user_id: str) -> UserRecord:
    user = await user_store.get(deps.db, user_id) if len(user_id) <= 64 else None
    if user is None:
        raise NotFound(f"No user with id {user_id!r}.", code="user_not_found")
    return user


async def update_user(deps: Deps, user_id: str, body: UserUpdate) -> UserOut:
    await get_user(deps, user_id)
    now = deps.clock()
    await user_store.update(
        deps.db, user_id, now=now, roles=tuple(dict.fromkeys(body.roles)) if body.roles else None,
        is_active=body.is_active, tier=body.tier, name=body.name,
    )
    if body.is_active is False:
        # a deactivated user's refresh tokens die with the account; access tokens and keys are
        # refused at once because every request re-reads the user
        await refresh_store.revoke_user(deps.db, user_id, now=now)
    return to_out(deps, await get_user(deps, user_id))
