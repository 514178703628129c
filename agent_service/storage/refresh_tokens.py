"""The `refresh_tokens` table: hashed, single-use tokens grouped in rotation families."""

from __future__ import annotations

from datetime import datetime

import msgspec

from agent_service.clock import iso, parse_iso
from agent_service.storage.db import Database


class RefreshRecord(msgspec.Struct, kw_only=True):
    id: str
    family_id: str
    user_id: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


async def create(db: Database, *, token_id: str, family_id: str, user_id: str, token_hash: str,
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


async def by_hash(db: Database, token_hash: str) -> RefreshRecord | None:
    row = await db.fetchone("SELECT * FROM refresh_tokens WHERE token_hash = ?", (token_hash,))
    if row is None:
        return None
    return RefreshRecord(
        id=row["id"], family_id=row["family_id"], user_id=row["user_id"],
        expires_at=parse_iso(row["expires_at"]),  # type: ignore[arg-type]
        used_at=parse_iso(row["used_at"]), revoked_at=parse_iso(row["revoked_at"]),
    )


async def consume(db: Database, token_id: str, *, now: datetime) -> bool:
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


async def revoke_user(db: Database, user_id: str, *, now: datetime) -> int:
    return await db.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (iso(now), user_id)
    )
