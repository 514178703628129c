"""The `api_keys` table: only a hash of each key and a display prefix are stored."""

from __future__ import annotations

from datetime import datetime

import msgspec

from agent_service.clock import iso, parse_iso
from agent_service.storage.cursor import KEYSET_SQL, keyset_params
from agent_service.storage.db import Database, Row


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


def _record(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row["id"], user_id=row["user_id"], name=row["name"], prefix=row["prefix"],
        scopes=tuple(s for s in row["scopes"].split(" ") if s), tier=row["tier"],
        created_at=parse_iso(row["created_at"]),  # type: ignore[arg-type]
        expires_at=parse_iso(row["expires_at"]), last_used_at=parse_iso(row["last_used_at"]),
        revoked_at=parse_iso(row["revoked_at"]),
    )


async def create(db: Database, *, key_id: str, user_id: str, name: str, key_hash: str, prefix: str,
                 scopes: tuple[str, ...], tier: str, expires_at: datetime | None, now: datetime) -> None:
    await db.execute(
        "INSERT INTO api_keys (id, user_id, name, key_hash, prefix, scopes, tier, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key_id, user_id, name, key_hash, prefix, " ".join(scopes), tier, iso(now), iso(expires_at)),
    )


async def by_hash(db: Database, key_hash: str) -> ApiKeyRecord | None:
    row = await db.fetchone("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))
    return _record(row) if row else None


async def get(db: Database, key_id: str) -> ApiKeyRecord | None:
    row = await db.fetchone("SELECT * FROM api_keys WHERE id = ?", (key_id,))
    return _record(row) if row else None


async def list_for(
    db: Database, user_id: str | None, *, limit: int, before: tuple[str, str] | None
) -> list[ApiKeyRecord]:
    where, params = [], []
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if before is not None:
        where.append(KEYSET_SQL)
        params += keyset_params(before)
    sql = "SELECT * FROM api_keys" + (" WHERE " + " AND ".join(where) if where else "")
    rows = await db.fetchall(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
    return [_record(r) for r in rows]


async def revoke(db: Database, key_id: str, *, now: datetime) -> bool:
    changed = await db.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (iso(now), key_id)
    )
    return changed > 0


async def touch(db: Database, key_id: str, *, now: datetime, every_seconds: int = 60) -> None:
    """Record use at most once a minute per key: a write on every request would serialise the API."""
    cutoff = iso(now.fromtimestamp(now.timestamp() - every_seconds, tz=now.tzinfo))
    await db.execute(
        "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        (iso(now), key_id, cutoff),
    )
