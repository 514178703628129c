"""The `users` table. Emails are unique case-insensitively (`email_key` is the folded form)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.kit.db import Database, Row, UniqueViolation
from agent_service.kit.pagination import Keyset
from agent_service.kit.pagination import where as where_sql

KEYSET = Keyset(time="created_at", id="id")


class UserRecord(msgspec.Struct, kw_only=True):
    id: str
    email: str
    name: str
    password_hash: str
    roles: tuple[str, ...]
    tier: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    monthly_token_budget: int | None = None  # None: the tier's (usage/), 0: no budget


def email_key(email: str) -> str:
    return email.strip().casefold()


def _user(row: Row) -> UserRecord:
    fields = dict(row)
    fields["roles"] = [r for r in fields["roles"].split(",") if r]  # stored comma-separated
    fields["is_active"] = bool(fields["is_active"])
    return msgspec.convert(fields, UserRecord, strict=False)


async def create_user(db: Database, *, user_id: str, email: str, name: str, password_hash: str,
                 roles: tuple[str, ...], tier: str | None, now: datetime) -> bool:
    """False when the email is taken (the unique index decides, so concurrent sign-ups on two
    machines cannot both win)."""
    try:
        await db.execute(
            "INSERT INTO users (id, email, email_key, name, password_hash, roles, tier, is_active, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (user_id, email.strip(), email_key(email), name, password_hash, ",".join(roles), tier, iso(now), iso(now)),
        )
    except UniqueViolation:
        return False
    return True


async def get_user(db: Database, user_id: str) -> UserRecord | None:
    row = await db.fetchone("SELECT * FROM users WHERE id = ?", (user_id,))
    return _user(row) if row else None


async def user_by_email(db: Database, email: str) -> UserRecord | None:
    row = await db.fetchone("SELECT * FROM users WHERE email_key = ?", (email_key(email),))
    return _user(row) if row else None


async def count_users(db: Database) -> int:
    row = await db.fetchone("SELECT COUNT(*) FROM users")
    return int(row[0]) if row else 0


async def list_users(db: Database, *, limit: int, cursor: str | None) -> tuple[list[UserRecord], str | None]:
    """Newest first, and the next page's cursor."""
    after = KEYSET.after(cursor)
    where, params = (f" WHERE {after.sql}", after.params) if after else ("", [])
    rows = await db.fetchall(f"SELECT * FROM users{where}{KEYSET.order_limit}", (*params, limit + 1))
    page, nxt = KEYSET.page(rows, limit)
    return [_user(r) for r in page], nxt


async def update_user(db: Database, user_id: str, *, now: datetime, roles: tuple[str, ...] | None = None,
                 is_active: bool | None = None, tier: str | None = None, name: str | None = None,
                 monthly_token_budget: int | None = None, clear_budget: bool = False) -> None:
    sets, params = ["updated_at = ?"], [iso(now)]
    if clear_budget or monthly_token_budget is not None:  # -1 (the API's "the tier's") is stored as NULL
        sets.append("monthly_token_budget = ?")
        params.append(None if clear_budget else monthly_token_budget)  # type: ignore[arg-type]
    for column, value in (("roles", None if roles is None else ",".join(roles)),
                          ("is_active", None if is_active is None else int(is_active)),
                          ("tier", tier), ("name", name)):
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(value)  # type: ignore[arg-type]
    await db.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = ?", (*params, user_id))


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    tier: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def _key(row: Row) -> ApiKeyRecord:
    fields = dict(row)
    fields["scopes"] = [s for s in fields["scopes"].split(" ") if s]  # stored space-separated
    return msgspec.convert(fields, ApiKeyRecord, strict=False)


async def create_key(db: Database, *, key_id: str, user_id: str, name: str, key_hash: str, prefix: str,
                     scopes: tuple[str, ...], tier: str, expires_at: datetime | None, now: datetime,
                     max_live: int | None = None) -> bool:
    """False if the user already holds `max_live` live keys: counted in the insert itself, so
    concurrent mints cannot slip past the cap one by one."""
    row = (key_id, user_id, name, key_hash, prefix, " ".join(scopes), tier, iso(now), iso(expires_at))
    columns = "INSERT INTO api_keys (id, user_id, name, key_hash, prefix, scopes, tier, created_at, expires_at)"
    if max_live is None:
        await db.execute(columns + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        return True
    async with db.transaction() as tx:
        # the user's row is the lock (BEGIN IMMEDIATE on SQLite, FOR UPDATE on PostgreSQL): under
        # READ COMMITTED, concurrent counts would not see each other's new keys
        await tx.fetchone(f"SELECT id FROM users WHERE id = ?{db.for_update}", (user_id,))
        inserted = await tx.execute(
            columns + " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE (SELECT COUNT(*) FROM api_keys WHERE user_id = ?"
            " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)) < ?",
            (*row, user_id, iso(now), max_live),
        )
    return inserted == 1


async def key_by_hash(db: Database, key_hash: str) -> ApiKeyRecord | None:
    row = await db.fetchone("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
    return _key(row) if row else None


async def get_key(db: Database, key_id: str) -> ApiKeyRecord | None:
    row = await db.fetchone("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    return _key(row) if row else None


async def list_keys(
    db: Database, user_id: str | None, *, limit: int, cursor: str | None
) -> tuple[list[ApiKeyRecord], str | None]:
    where: list[str] = []
    params: list[Any] = []
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if (after := KEYSET.after(cursor)) is not None:
        where.append(after.sql)
        params += after.params
    rows = await db.fetchall(f"SELECT * FROM api_keys{where_sql(where)}{KEYSET.order_limit}", (*params, limit + 1))
    page, nxt = KEYSET.page(rows, limit)
    return [_key(r) for r in page], nxt


async def revoke_key(db: Database, key_id: str, *, now: datetime) -> bool:
    changed = await db.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (iso(now), key_id)
    )
    return changed > 0


async def touch_key(db: Database, key_id: str, *, now: datetime, every_seconds: int = 60) -> None:
    """Record use at most once a minute per key: a write on every request would serialise the API."""
    cutoff = iso(now.fromtimestamp(now.timestamp() - every_seconds, tz=now.tzinfo))
    await db.execute(
        "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        (iso(now), key_id, cutoff),
    )


class RefreshRecord(msgspec.Struct, kw_only=True):
    id: str
    family_id: str
    user_id: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


async def create_refresh(db: Database, *, token_id: str, family_id: str, user_id: str, token_hash: str,
                 expires_at: datetime, now: datetime) -> bool:
    """False (nothing stored) when the family has been revoked: one statement, so a revocation
    racing with a rotation either covers the new token or stops it being issued."""
    changed = await db.execute(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at)"
        " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
        " (SELECT 1 FROM refresh_tokens WHERE family_id = ? AND revoked_at IS NOT NULL)",
        (token_id, family_id, user_id, token_hash, iso(now), iso(expires_at), family_id),
    )
    return changed > 0


async def refresh_by_hash(db: Database, token_hash: str) -> RefreshRecord | None:
    row = await db.fetchone("SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash,))
    if row is None:
        return None
    return msgspec.convert(dict(row), RefreshRecord, strict=False)


async def consume_refresh(db: Database, token_id: str, *, now: datetime) -> bool:
    """Mark used; exactly one concurrent caller wins."""
    changed = await db.execute(
        "UPDATE refresh_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL",
        (iso(now), token_id),
    )
    return changed > 0


async def revoke_family(db: Database, family_id: str, *, now: datetime) -> int:
    return await db.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL", (iso(now), family_id)
    )


async def revoke_user_refresh(db: Database, user_id: str, *, now: datetime) -> int:
    return await db.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (iso(now), user_id)
    )
