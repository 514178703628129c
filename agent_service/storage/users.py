"""The `users` table. Emails are unique case-insensitively (`email_key` is the folded form)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from agent_service.clock import iso, parse_iso
from agent_service.storage.cursor import KEYSET_SQL, keyset_params
from agent_service.storage.db import Database, Row


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


def email_key(email: str) -> str:
    return email.strip().casefold()


def _record(row: Row) -> UserRecord:
    return UserRecord(
        id=row["id"], email=row["email"], name=row["name"], password_hash=row["password_hash"],
        roles=tuple(r for r in row["roles"].split(",") if r), tier=row["tier"], is_active=bool(row["is_active"]),
        created_at=parse_iso(row["created_at"]),  # type: ignore[arg-type]
        updated_at=parse_iso(row["updated_at"]),  # type: ignore[arg-type]
    )


async def create(db: Database, *, user_id: str, email: str, name: str, password_hash: str,
                 roles: tuple[str, ...], tier: str | None, now: datetime) -> bool:
    """False when the email is taken."""
    async with db.transaction() as tx:
        async with tx.execute("SELECT 1 FROM users WHERE email_key = ?", (email_key(email),)) as cur:
            if await cur.fetchone():
                return False
        await tx.execute(
            "INSERT INTO users (id, email, email_key, name, password_hash, roles, tier, is_active, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (user_id, email.strip(), email_key(email), name, password_hash, ",".join(roles), tier, iso(now), iso(now)),
        )
    return True


async def get(db: Database, user_id: str) -> UserRecord | None:
    row = await db.fetchone("SELECT * FROM users WHERE id = ?", (user_id,))
    return _record(row) if row else None


async def by_email(db: Database, email: str) -> UserRecord | None:
    row = await db.fetchone("SELECT * FROM users WHERE email_key = ?", (email_key(email),))
    return _record(row) if row else None


async def count(db: Database) -> int:
    row = await db.fetchone("SELECT COUNT(*) FROM users")
    return int(row[0]) if row else 0


async def list_page(db: Database, *, limit: int, before: tuple[str, str] | None) -> list[UserRecord]:
    """Newest first; `before` is the (created_at, id) of the last row of the previous page."""
    where, params = (f" WHERE {KEYSET_SQL}", keyset_params(before)) if before else ("", [])
    rows = await db.fetchall(f"SELECT * FROM users{where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
    return [_record(r) for r in rows]


async def update(db: Database, user_id: str, *, now: datetime, roles: tuple[str, ...] | None = None,
                 is_active: bool | None = None, tier: str | None = None, name: str | None = None) -> None:
    sets, params = ["updated_at = ?"], [iso(now)]
    for column, value in (("roles", None if roles is None else ",".join(roles)),
                          ("is_active", None if is_active is None else int(is_active)),
                          ("tier", tier), ("name", name)):
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(value)  # type: ignore[arg-type]
    await db.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = ?", (*params, user_id))
