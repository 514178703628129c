"""The `audit_logs` table: SQL in, Structs out; cursor pages newest first; archive helpers.

Order is (timestamp, id) descending. The cursor is the url-safe base64 (unpadded) of the JSON
`[timestamp, id]` of the last row of a page; a row with the same timestamp and a smaller id,
or an older timestamp, comes next, so pages have no duplicates and no gaps even when many
rows share one timestamp.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import msgspec

from agent_service.audit.schemas import AuditEntry, AuditPage, AuditQuery, AuditRecord, AuditStats
from agent_service.clock import iso, parse_iso
from agent_service.kit.db import Database, Row
from agent_service.kit.pagination import Keyset

KEYSET = Keyset(time="timestamp", id="id", int_ids=True)

AuditRow = tuple[Any, ...]

_COLUMNS = (
    "timestamp", "actor", "actor_user_id", "actor_api_key_id", "action", "resource_type", "resource_id",
    "request_id", "method", "path", "status", "client_ip", "user_agent", "metadata",
)
_INSERT = f"INSERT INTO audit_logs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
# equality filters of AuditQuery; each name is both the Struct field and the column
_FILTERS = ("actor", "action", "resource_type", "resource_id", "request_id", "status")
# client-controlled text (path, user agent, ...) is clipped so one request cannot bloat the table
_MAX_TEXT = 2048
# well under SQLite's historical 999 bound-parameter limit (and PostgreSQL's 65535)
_DELETE_CHUNK = 500
_SQLITE_MAX_INT = 2**63 - 1

_json = msgspec.json.Encoder()
_CursorKey = tuple[str, Annotated[int, msgspec.Meta(ge=1, le=_SQLITE_MAX_INT)]]


def _clip(value: str | None, limit: int = _MAX_TEXT) -> str | None:
    return value if value is None or len(value) <= limit else value[:limit]


def to_row(entry: AuditEntry, *, now: datetime) -> AuditRow:
    """Encode an entry for INSERT. Done at record time so a bad entry fails alone, not its batch."""
    return (
        iso(entry.timestamp or now),
        _clip(entry.actor, 200) or "anonymous",  # the limits of Actor / ResourceType in the schema
        _clip(entry.actor_user_id),
        _clip(entry.actor_api_key_id),
        entry.action,
        _clip(entry.resource_type, 64) or "unknown",
        _clip(entry.resource_id),
        _clip(entry.request_id),
        _clip(entry.method),
        _clip(entry.path),
        entry.status,
        _clip(entry.client_ip),
        _clip(entry.user_agent),
        _json.encode(entry.metadata).decode(),
    )


async def insert_rows(db: Database, rows: Sequence[AuditRow]) -> None:
    """All rows in one transaction: either the whole batch is stored or none of it."""
    if rows:
        await db.executemany(_INSERT, rows)


async def insert_many(db: Database, entries: Iterable[AuditEntry], *, now: datetime) -> None:
    await insert_rows(db, [to_row(e, now=now) for e in entries])


def _record(row: Row) -> AuditRecord:
    fields = dict(row)
    fields["metadata"] = msgspec.json.decode(fields["metadata"])  # stored as JSON text
    return msgspec.convert(fields, AuditRecord, strict=False)


async def get(db: Database, log_id: int) -> AuditRecord | None:
    if not 1 <= log_id <= _SQLITE_MAX_INT:
        return None
    row = await db.fetchone("SELECT * FROM audit_logs WHERE id = ?", (log_id,))
    return _record(row) if row else None


def _range(since: datetime | None, until: datetime | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append("timestamp >= ?")
        params.append(iso(since))
    if until is not None:
        where.append("timestamp < ?")
        params.append(iso(until))
    return where, params


def _where(clauses: list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


async def query(db: Database, q: AuditQuery) -> AuditPage:
    after = KEYSET.after(q.cursor)  # validated before any SQL
    where, params = _range(q.since, q.until)
    for name in _FILTERS:
        value = getattr(q, name)
        if value is not None:
            where.append(f"{name} = ?")
            params.append(value)
    if after is not None:
        where.append(after.sql)
        params.extend(after.params)
    rows = await db.fetchall(
        f"SELECT * FROM audit_logs{_where(where)}{KEYSET.order_limit}",
        [*params, q.limit + 1],  # one extra row says whether a next page exists
    )
    page, next_cursor = KEYSET.page(rows, q.limit)
    return AuditPage(items=[_record(r) for r in page], next_cursor=next_cursor)


async def stats(db: Database, *, since: datetime | None = None, until: datetime | None = None) -> AuditStats:
    where, params = _range(since, until)
    clause = _where(where)
    # one read transaction: the totals and the breakdowns come from the same snapshot
    async with db.transaction(immediate=False) as tx:
        rows = await tx.fetchall(f"SELECT action, COUNT(*) FROM audit_logs{clause} GROUP BY action", params)
        by_action = {r[0]: r[1] for r in rows}
        rows = await tx.fetchall(f"SELECT resource_type, COUNT(*) FROM audit_logs{clause} GROUP BY resource_type",
                                 params)
        by_resource = {r[0]: r[1] for r in rows}
        row = await tx.fetchone(
            f"SELECT COUNT(*), COUNT(DISTINCT actor), MIN(timestamp), MAX(timestamp) FROM audit_logs{clause}", params)
        total, actors, first, last = (row[0], row[1], row[2], row[3]) if row else (0, 0, None, None)
    return AuditStats(
        total=total,
        unique_actors=actors,
        by_action=by_action,
        by_resource_type=by_resource,
        since=since,
        until=until,
        first_at=parse_iso(first),
        last_at=parse_iso(last),
    )


# --- helpers of the archive job ---------------------------------------------------------------


async def oldest_before(db: Database, cutoff: datetime, limit: int) -> list[AuditRecord]:
    """The oldest `limit` rows strictly before `cutoff`, in (timestamp, id) order (index order)."""
    rows = await db.fetchall(
        "SELECT * FROM audit_logs WHERE timestamp < ? ORDER BY timestamp, id LIMIT ?", (iso(cutoff), limit)
    )
    return [_record(r) for r in rows]


async def has_rows(db: Database, *, first_id: int, last_id: int, since: datetime, until: datetime) -> bool:
    """Any row left with an id in [first_id, last_id] and a timestamp in [since, until)?"""
    row = await db.fetchone(
        "SELECT 1 FROM audit_logs WHERE id BETWEEN ? AND ? AND timestamp >= ? AND timestamp < ? LIMIT 1",
        (first_id, last_id, iso(since), iso(until)),
    )
    return row is not None


async def delete_ids(db: Database, ids: Sequence[int]) -> int:
    """Delete these rows in one transaction; returns how many existed."""
    deleted = 0
    async with db.transaction() as tx:
        for start in range(0, len(ids), _DELETE_CHUNK):
            chunk = list(ids[start : start + _DELETE_CHUNK])
            deleted += await tx.execute(f"DELETE FROM audit_logs WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
    return deleted
