"""The `sessions` table: conversation history per (owner, client-chosen id). SQL in, Structs out.

The key is (owner_id, id): the same id string of two users names two sessions, and every
statement here names the owner, so nobody reaches another's row.

Every read-modify-write runs inside `db.transaction()` and first makes sure the row exists
(INSERT … ON CONFLICT DO NOTHING), then claims it (BEGIN IMMEDIATE on SQLite, FOR UPDATE on
PostgreSQL). Claiming a row that does not exist yet locks nothing on PostgreSQL, so without the
insert two first uses at once would both start from an empty history and the later write would
erase the earlier exchange; with it the second waits for the first and builds on it. A session
whose `expires_at` has passed counts as gone: the next write starts it afresh under the same id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.kit.db import Database, Row, Tx
from agent_service.kit.pagination import Keyset
from agent_service.sessions.schemas import SessionDetail, SessionMessage, SessionPage, SessionSummary

_SUMMARY_COLUMNS = (
    "id, agent_id, title, message_count, created_at, updated_at, last_activity, expires_at"
)
_UPSERT = (
    "INSERT INTO sessions (owner_id, id, agent_id, title, messages, message_count, created_at, updated_at,"
    " last_activity, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (owner_id, id) DO UPDATE SET agent_id = excluded.agent_id, title = excluded.title,"
    " messages = excluded.messages, message_count = excluded.message_count, created_at = excluded.created_at,"
    " updated_at = excluded.updated_at, last_activity = excluded.last_activity, expires_at = excluded.expires_at"
)
# the row a first use claims; a row already there (live or expired) is left as it is
_INSERT_IF_MISSING = (
    "INSERT INTO sessions (owner_id, id, agent_id, title, messages, message_count, created_at, updated_at,"
    " last_activity, expires_at) VALUES (?, ?, ?, '', '[]', 0, ?, ?, ?, ?) ON CONFLICT (owner_id, id) DO NOTHING"
)
KEYSET = Keyset(time="last_activity", id="id")
# one short write transaction per batch: the web process never waits long behind the cleanup
DELETE_BATCH = 500

_messages_decoder = msgspec.json.Decoder(list[SessionMessage])
_encoder = msgspec.json.Encoder()


def _summary(row: Row) -> SessionSummary:
    return msgspec.convert(dict(row), SessionSummary, strict=False)


def _detail(row: Row) -> SessionDetail:
    fields = dict(row)
    fields["messages"] = _messages_decoder.decode(fields["messages"])  # stored as JSON text
    return msgspec.convert(fields, SessionDetail, strict=False)


def _fresh(session_id: str, agent_id: str, now: datetime, expires_at: datetime) -> SessionDetail:
    return SessionDetail(
        id=session_id, agent_id=agent_id, title="", message_count=0, created_at=now, updated_at=now,
        last_activity=now, expires_at=expires_at, messages=[],
    )


async def _claim(
    db: Database, tx: Tx, owner_id: str, session_id: str, agent_id: str, now: datetime, expires_at: datetime
) -> tuple[SessionDetail, bool]:
    """The row, created if missing and claimed for this transaction (two exchanges on one session
    serialize here, its first use included). An expired row comes back as a fresh session and
    True: the caller's write must replace it whole."""
    await tx.execute(_INSERT_IF_MISSING, (owner_id, session_id, agent_id, iso(now), iso(now), iso(now),
                                          iso(expires_at)))
    row = await tx.fetchone(f"SELECT * FROM sessions WHERE owner_id = ? AND id = ?{db.for_update}",
                            (owner_id, session_id))
    # no row: a DELETE got in between the two statements; the write below recreates it
    current = _detail(row) if row else None
    if current is None or current.expires_at <= now:
        return _fresh(session_id, agent_id, now, expires_at), True
    return current, False


async def _write(tx: Tx, owner_id: str, s: SessionDetail) -> None:
    await tx.execute(
        _UPSERT,
        (owner_id, s.id, s.agent_id, s.title, _encoder.encode(s.messages).decode(), len(s.messages),
         iso(s.created_at), iso(s.updated_at), iso(s.last_activity), iso(s.expires_at)),
    )


async def get(db: Database, owner_id: str, session_id: str) -> SessionDetail | None:
    """The stored row, expired or not (the caller decides what expiry means)."""
    row = await db.fetchone("SELECT * FROM sessions WHERE owner_id = ? AND id = ?", (owner_id, session_id))
    return _detail(row) if row else None


async def open_session(
    db: Database, *, owner_id: str, session_id: str, agent_id: str, now: datetime, expires_at: datetime
) -> SessionDetail:
    """Create the session, restart it if it has expired, or just mark it active; returns it."""
    async with db.transaction() as tx:
        current, restarted = await _claim(db, tx, owner_id, session_id, agent_id, now, expires_at)
        if restarted:
            await _write(tx, owner_id, current)
            return current
        current.agent_id, current.last_activity, current.expires_at = agent_id, now, expires_at
        # a touch leaves the (possibly large) message list as it is
        await tx.execute(
            "UPDATE sessions SET agent_id = ?, last_activity = ?, expires_at = ? WHERE owner_id = ? AND id = ?",
            (agent_id, iso(now), iso(expires_at), owner_id, session_id),
        )
    return current


async def append(
    db: Database,
    *,
    owner_id: str,
    session_id: str,
    agent_id: str,
    messages: list[SessionMessage],
    title: str,
    now: datetime,
    expires_at: datetime,
    max_messages: int,
) -> SessionDetail:
    """Add `messages`, keeping the newest `max_messages`. A missing or expired session is started
    afresh with them; `title` is used only while the session has none."""
    async with db.transaction() as tx:
        current, _ = await _claim(db, tx, owner_id, session_id, agent_id, now, expires_at)
        kept = [*current.messages, *messages][-max_messages:] if max_messages > 0 else []
        current.messages, current.message_count = kept, len(kept)
        current.title = current.title or title
        current.agent_id, current.updated_at, current.last_activity, current.expires_at = (
            agent_id, now, now, expires_at,
        )
        await _write(tx, owner_id, current)
    return current


async def list_page(
    db: Database, owner_id: str, *, now: datetime, limit: int, cursor: str | None = None
) -> SessionPage:
    """The owner's live sessions, most recently active first (ties by id, descending)."""
    params: list[Any] = [owner_id, iso(now) or ""]
    sql = f"SELECT {_SUMMARY_COLUMNS} FROM sessions WHERE owner_id = ? AND expires_at > ?"
    if (after := KEYSET.after(cursor)) is not None:
        sql += " AND " + after.sql
        params += after.params
    rows = await db.fetchall(sql + KEYSET.order_limit, (*params, limit + 1))
    page, next_cursor = KEYSET.page(rows, limit)
    return SessionPage(items=[_summary(r) for r in page], next_cursor=next_cursor)


async def delete(db: Database, owner_id: str, session_id: str, *, live_at: datetime | None = None) -> bool:
    """True if a row went. With `live_at`, an already-expired session is left to the cleanup job
    and reported as not there."""
    if live_at is None:
        return await db.execute("DELETE FROM sessions WHERE owner_id = ? AND id = ?", (owner_id, session_id)) > 0
    changed = await db.execute(
        "DELETE FROM sessions WHERE owner_id = ? AND id = ? AND expires_at > ?", (owner_id, session_id, iso(live_at))
    )
    return changed > 0


async def delete_expired(db: Database, now: datetime, *, batch_size: int = DELETE_BATCH) -> int:
    """Delete every session with `expires_at <= now`, `batch_size` rows per transaction."""
    cutoff = iso(now)
    total = 0
    while True:
        keys = await db.fetchall(
            "SELECT owner_id, id FROM sessions WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (cutoff, batch_size),
        )
        if not keys:
            return total
        async with db.transaction() as tx:
            # re-checked per row: a session used again since the SELECT is live and stays
            for k in keys:
                total += await tx.execute("DELETE FROM sessions WHERE owner_id = ? AND id = ? AND expires_at <= ?",
                                          (k["owner_id"], k["id"], cutoff))
        if len(keys) < batch_size:
            return total

