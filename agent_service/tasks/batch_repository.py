"""The `batches` table and the batch side of `tasks` (SQL in, Structs out). The only interpolated
SQL is placeholders and the keyset's clauses, never input.

A batch's counts are always read from its tasks (`tasks.batch_id`, indexed with the state), so
they can never disagree with the tasks themselves. Only tasks/lifecycle.py calls the writes
that create or remove tasks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.kit.db import Database, Row
from agent_service.kit.pagination import Keyset
from agent_service.kit.pagination import where as where_sql

KEYSET = Keyset(time="created_at", id="id")


class BatchRecord(msgspec.Struct, kw_only=True):
    id: str
    owner_id: str
    agent_id: str
    size: int
    webhook: str | None  # JSON of agents.schemas.StoredTaskWebhook
    request_id: str | None
    created_at: datetime
    cancelled_at: datetime | None
    completed_at: datetime | None


class BatchTask(msgspec.Struct, kw_only=True):
    """One PENDING task row of a batch."""

    task_id: str
    kind: str
    request_id: str | None
    session_id: str | None
    payload: str | None
    scheduled_for: datetime | None
    priority: str | None
    webhook: str | None


def _batch(row: Row) -> BatchRecord:
    return msgspec.convert(dict(row), BatchRecord)


async def create(db: Database, batch: BatchRecord, tasks: Sequence[BatchTask]) -> None:
    """The batch and all its PENDING tasks, in one transaction: all of them exist, or none."""
    now = iso(batch.created_at)
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO batches (id, owner_id, agent_id, size, webhook, request_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (batch.id, batch.owner_id, batch.agent_id, batch.size, batch.webhook, batch.request_id, now))
        await tx.executemany(
            "INSERT INTO tasks (id, owner_id, agent_id, kind, state, tries, request_id, session_id, created_at,"
            " updated_at, payload, scheduled_for, priority, webhook, batch_id)"
            " VALUES (?, ?, ?, ?, 'PENDING', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(t.task_id, batch.owner_id, batch.agent_id, t.kind, t.request_id, t.session_id, now, now, t.payload,
              iso(t.scheduled_for), t.priority, t.webhook, batch.id) for t in tasks])


async def delete(db: Database, batch_id: str) -> None:
    """A batch whose jobs could not all be queued: it and its tasks go, in one transaction (a job
    that did get queued finds no record and is dropped by its worker)."""
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM tasks WHERE batch_id = ?", (batch_id,))
        await tx.execute("DELETE FROM batches WHERE id = ?", (batch_id,))


async def get(db: Database, batch_id: str) -> BatchRecord | None:
    row = await db.fetchone("SELECT * FROM batches WHERE id = ?", (batch_id,))
    return _batch(row) if row else None


async def counts(db: Database, batch_id: str) -> dict[str, int]:
    """How many of the batch's tasks are in each state."""
    rows = await db.fetchall("SELECT state, COUNT(*) FROM tasks WHERE batch_id = ? GROUP BY state", (batch_id,))
    return {r[0]: int(r[1]) for r in rows}


async def last_finished_at(db: Database, batch_id: str) -> datetime | None:
    row = await db.fetchone("SELECT MAX(completed_at) FROM tasks WHERE batch_id = ?", (batch_id,))
    return datetime.fromisoformat(row[0]) if row and row[0] else None


async def counts_many(db: Database, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    if not batch_ids:
        return {}
    marks = ", ".join("?" * len(batch_ids))
    rows = await db.fetchall(
        f"SELECT batch_id, state, COUNT(*) FROM tasks WHERE batch_id IN ({marks}) GROUP BY batch_id, state",  # noqa: S608
        tuple(batch_ids))
    found: dict[str, dict[str, int]] = {b: {} for b in batch_ids}
    for r in rows:
        found[r[0]][r[1]] = int(r[2])
    return found


async def unfinished_ids(db: Database, batch_id: str) -> list[str]:
    rows = await db.fetchall(
        "SELECT id FROM tasks WHERE batch_id = ? AND state NOT IN ('SUCCESS', 'FAILURE', 'REVOKED')", (batch_id,))
    return [r[0] for r in rows]


async def running_ids(db: Database, batch_id: str) -> list[str]:
    rows = await db.fetchall("SELECT id FROM tasks WHERE batch_id = ? AND state IN ('STARTED', 'RETRY')", (batch_id,))
    return [r[0] for r in rows]


async def revoked_unstarted(db: Database, task_ids: Sequence[str]) -> list[str]:
    """Which of these tasks were cancelled before they ever started."""
    found: list[str] = []
    for i in range(0, len(task_ids), 500):
        part = task_ids[i:i + 500]
        rows = await db.fetchall(f"SELECT id FROM tasks WHERE id IN ({', '.join('?' * len(part))})"  # noqa: S608
                                 " AND state = 'REVOKED' AND started_at IS NULL", tuple(part))
        found += [r[0] for r in rows]
    return found


async def mark_cancelled(db: Database, batch_id: str, *, now: datetime) -> None:
    """The first cancel's time is kept (a repeated cancel changes nothing)."""
    await db.execute("UPDATE batches SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL", (iso(now), batch_id))


async def mark_completed(db: Database, batch_id: str, *, at: datetime) -> None:
    await db.execute("UPDATE batches SET completed_at = ? WHERE id = ? AND completed_at IS NULL", (iso(at), batch_id))


async def list_page(db: Database, *, owner_id: str | None, limit: int,
                    cursor: str | None) -> tuple[list[BatchRecord], str | None]:
    """Newest first; `owner_id=None`: everyone's (admins)."""
    where: list[str] = []
    params: list[Any] = []
    if owner_id is not None:
        where.append("owner_id = ?")
        params.append(owner_id)
    if (after := KEYSET.after(cursor)) is not None:
        where.append(after.sql)
        params += after.params
    sql = f"SELECT * FROM batches{where_sql(where)}{KEYSET.order_limit}"  # noqa: S608 (placeholders only)
    rows = await db.fetchall(sql, (*params, limit + 1))
    page, nxt = KEYSET.page(rows, limit)
    return [_batch(r) for r in page], nxt
