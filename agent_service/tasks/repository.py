"""The `tasks` table: the durable record of each background invocation (SQL in, Structs out).

Only the writer of task state (tasks/lifecycle.py and its parts) calls the writes; services read.
An export's walk over the table is tasks/export_repository.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.kit.db import Database, Row
from agent_service.kit.pagination import Keyset
from agent_service.kit.pagination import where as where_sql

_FINISHED = "('SUCCESS', 'FAILURE', 'REVOKED')"
# a RETRY or finish writes its event here in the same transaction (webhooks/ consumes them); a
# task without an owner (maintenance) has no one to tell
OUTBOX_EVENTS = {"SUCCESS": "task.succeeded", "FAILURE": "task.failed", "REVOKED": "task.cancelled",
                 "RETRY": "task.retrying"}
_OUTBOX = ("INSERT INTO task_events_outbox (task_id, owner_id, event, created_at)"
           " SELECT id, owner_id, ?, ? FROM tasks WHERE id = ? AND owner_id IS NOT NULL")


KEYSET = Keyset(time="created_at", id="id")


class TaskRecord(msgspec.Struct, kw_only=True):
    id: str
    owner_id: str | None
    agent_id: str | None
    kind: str
    state: str
    tries: int
    error: str | None
    request_id: str | None
    session_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    next_retry_at: datetime | None
    payload: str | None = None
    scheduled_for: datetime | None = None
    priority: str | None = None
    retries: int = 0
    worker_losses: int = 0
    error_code: str | None = None
    webhook: str | None = None  # JSON of agents.schemas.StoredTaskWebhook
    batch_id: str | None = None  # the batch it was submitted in (tasks/batches.py)


def _record(row: Row) -> TaskRecord:
    return msgspec.convert(dict(row), TaskRecord)


async def create(
    db: Database,
    *,
    task_id: str,
    kind: str,
    agent_id: str | None,
    owner_id: str | None,
    request_id: str | None,
    session_id: str | None,
    now: datetime,
    payload: str | None = None,
    scheduled_for: datetime | None = None,
    priority: str | None = None,
    webhook: str | None = None,
) -> None:
    await create_many(db, [NewTask(task_id=task_id, kind=kind, agent_id=agent_id, owner_id=owner_id,
                                   request_id=request_id, session_id=session_id, payload=payload,
                                   scheduled_for=scheduled_for, priority=priority, webhook=webhook)], now=now)


class NewTask(msgspec.Struct, kw_only=True):
    """The fields of a PENDING record `create_many` writes."""

    task_id: str
    kind: str
    agent_id: str | None
    owner_id: str | None
    request_id: str | None
    session_id: str | None
    payload: str | None = None
    scheduled_for: datetime | None = None
    priority: str | None = None
    webhook: str | None = None


async def create_many(db: Database, tasks: list[NewTask], *, now: datetime) -> None:
    """PENDING records, all in one statement (submissions made together are written together)."""
    values = ", ".join(["(?, ?, ?, ?, 'PENDING', 0, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(tasks))
    params: list[Any] = []
    for t in tasks:
        params += (t.task_id, t.owner_id, t.agent_id, t.kind, t.request_id, t.session_id, iso(now), iso(now),
                   t.payload, iso(t.scheduled_for), t.priority, t.webhook)
    await db.execute(
        "INSERT INTO tasks (id, owner_id, agent_id, kind, state, tries, request_id, session_id,"
        f" created_at, updated_at, payload, scheduled_for, priority, webhook) VALUES {values}", params,
    )


async def delete(db: Database, task_id: str) -> None:
    await db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))


async def get(db: Database, task_id: str) -> TaskRecord | None:
    row = await db.fetchone("SELECT * FROM tasks WHERE id = ?", (task_id,))
    return _record(row) if row else None


class Counts(msgspec.Struct, frozen=True):
    retries: int
    worker_losses: int


async def mark_started(db: Database, task_id: str, *, tries: int, now: datetime,
                       worker_lost: bool = False) -> Counts | None:
    """STARTED for this try, and the task's counts; None (nothing changed) for a finished or unknown
    task (at-least-once re-delivery). With `worker_lost`, the previous run's worker died: counted
    apart from the retries."""
    row = await db.fetchone(
        "UPDATE tasks SET state = 'STARTED', tries = ?, started_at = COALESCE(started_at, ?),"
        " worker_losses = worker_losses + ?, updated_at = ?, next_retry_at = NULL"
        f" WHERE id = ? AND state NOT IN {_FINISHED} RETURNING retries, worker_losses",
        (tries, iso(now), int(worker_lost), iso(now), task_id),
    )
    return Counts(retries=row[0], worker_losses=row[1]) if row is not None else None


async def touch(db: Database, task_id: str, *, now: datetime) -> None:
    """A sign of life for the sweeper (a re-queued run of a task that stays PENDING)."""
    await db.execute(f"UPDATE tasks SET updated_at = ? WHERE id = ? AND state NOT IN {_FINISHED}",
                     (iso(now), task_id))


async def stale(db: Database, *, states: tuple[str, ...], before: datetime, limit: int) -> list[TaskRecord]:
    """Unfinished tasks whose record has not changed since `before` (the sweeper's candidates)."""
    marks = ", ".join("?" * len(states))
    rows = await db.fetchall(
        f"SELECT * FROM tasks WHERE state IN ({marks}) AND updated_at < ? ORDER BY updated_at LIMIT ?",
        (*states, iso(before), limit),
    )
    return [_record(r) for r in rows]


async def mark_retry(db: Database, task_id: str, *, error: str, retry_at: datetime, now: datetime) -> bool:
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE tasks SET state = 'RETRY', error = ?, next_retry_at = ?, updated_at = ?, retries = retries + 1"
            f" WHERE id = ? AND state NOT IN {_FINISHED}",
            (error, iso(retry_at), iso(now), task_id),
        )
        if changed:
            await tx.execute(_OUTBOX, (OUTBOX_EVENTS["RETRY"], iso(now), task_id))
    return changed > 0


async def mark_finished(
    db: Database, task_id: str, *, state: str, error: str | None, now: datetime, code: str | None = None
) -> bool:
    """SUCCESS / FAILURE / REVOKED. The first finish wins; later ones change nothing."""
    async with db.transaction() as tx:
        changed = await tx.execute(
            "UPDATE tasks SET state = ?, error = ?, error_code = ?, completed_at = ?, updated_at = ?,"
            f" next_retry_at = NULL WHERE id = ? AND state NOT IN {_FINISHED}",
            (state, error, code, iso(now), iso(now), task_id),
        )
        if changed:
            await tx.execute(_OUTBOX, (OUTBOX_EVENTS[state], iso(now), task_id))
    return changed > 0


async def mark_started_many(db: Database, starts: list[tuple[str, int, bool]], *,
                            now: datetime) -> dict[str, Counts]:
    """`mark_started` for several tasks at once, (task id, tries, worker lost) each: one UPDATE
    per distinct (tries, worker lost), in one transaction when there are several. The counts of
    the tasks that changed (a finished or unknown task is left out)."""
    groups: dict[tuple[int, bool], list[str]] = {}
    for task_id, tries, lost in starts:
        groups.setdefault((tries, lost), []).append(task_id)

    def update(tries: int, lost: bool, ids: list[str]) -> tuple[str, tuple[Any, ...]]:
        return ("UPDATE tasks SET state = 'STARTED', tries = ?, started_at = COALESCE(started_at, ?),"
                " worker_losses = worker_losses + ?, updated_at = ?, next_retry_at = NULL"
                f" WHERE id IN ({', '.join('?' * len(ids))}) AND state NOT IN {_FINISHED}"
                " RETURNING id, retries, worker_losses", (tries, iso(now), int(lost), iso(now), *ids))

    if len(groups) == 1:  # one statement is atomic by itself
        ((tries, lost), ids), = groups.items()
        rows = await db.fetchall(*update(tries, lost, ids))
    else:
        rows = []
        async with db.transaction() as tx:
            for (tries, lost), ids in groups.items():
                rows += await tx.fetchall(*update(tries, lost, ids))
    return {r[0]: Counts(retries=r[1], worker_losses=r[2]) for r in rows}


async def mark_succeeded_many(db: Database, task_ids: list[str], *, now: datetime) -> set[str]:
    """`mark_finished(state="SUCCESS")` for several tasks in one transaction (one UPDATE and one
    outbox INSERT for all); the ids that changed (the first finish wins)."""
    marks = ", ".join("?" * len(task_ids))
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "UPDATE tasks SET state = 'SUCCESS', error = NULL, error_code = NULL, completed_at = ?, updated_at = ?,"
            f" next_retry_at = NULL WHERE id IN ({marks}) AND state NOT IN {_FINISHED} RETURNING id",
            (iso(now), iso(now), *task_ids))
        changed = [r[0] for r in rows]
        if changed:
            await tx.execute(
                "INSERT INTO task_events_outbox (task_id, owner_id, event, created_at) SELECT id, owner_id, ?, ?"
                f" FROM tasks WHERE id IN ({', '.join('?' * len(changed))}) AND owner_id IS NOT NULL",
                (OUTBOX_EVENTS["SUCCESS"], iso(now), *changed))
    return set(changed)


async def requeue(db: Database, task_id: str, *, now: datetime) -> bool:
    """A failed or cancelled task back to PENDING for another run (admin retry)."""
    changed = await db.execute(
        "UPDATE tasks SET state = 'PENDING', tries = 0, retries = 0, worker_losses = 0, error = NULL,"
        " error_code = NULL, started_at = NULL, completed_at = NULL, next_retry_at = NULL, updated_at = ?"
        " WHERE id = ? AND state IN ('FAILURE', 'REVOKED')",
        (iso(now), task_id),
    )
    return changed > 0


def _filters(owner_id: str | None, state: str | None, agent_id: str | None, session_id: str | None,
             states: tuple[str, ...]) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("owner_id", owner_id), ("state", state), ("agent_id", agent_id),
                          ("session_id", session_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if states:  # any of several states (a protocol's one state can be two of ours)
        where.append(f"state IN ({', '.join('?' * len(states))})")
        params += states
    return where, params


async def list_page(
    db: Database, *, owner_id: str | None, state: str | None, agent_id: str | None, limit: int, cursor: str | None,
    session_id: str | None = None, states: tuple[str, ...] = (),
) -> tuple[list[TaskRecord], str | None]:
    """Newest first, and the next page's cursor. `owner_id=None` lists everyone's (admins)."""
    where, params = _filters(owner_id, state, agent_id, session_id, states)
    if (after := KEYSET.after(cursor)) is not None:
        where.append(after.sql)
        params += after.params
    rows = await db.fetchall(f"SELECT * FROM tasks{where_sql(where)}{KEYSET.order_limit}", (*params, limit + 1))
    page, nxt = KEYSET.page(rows, limit)
    return [_record(r) for r in page], nxt


async def count(db: Database, *, owner_id: str | None, agent_id: str | None = None, session_id: str | None = None,
                states: tuple[str, ...] = ()) -> int:
    """How many tasks list_page would list over all its pages (with the same filters)."""
    where, params = _filters(owner_id, None, agent_id, session_id, states)
    row = await db.fetchone(f"SELECT COUNT(*) FROM tasks{where_sql(where)}", tuple(params))
    return int(row[0]) if row else 0


async def count_by_state(db: Database) -> dict[str, int]:
    rows = await db.fetchall("SELECT state, COUNT(*) FROM tasks GROUP BY state")
    return {r[0]: int(r[1]) for r in rows}


async def recent_failures(db: Database, *, limit: int) -> list[TaskRecord]:
    rows = await db.fetchall(
        "SELECT * FROM tasks WHERE state = 'FAILURE' ORDER BY completed_at DESC LIMIT ?", (limit,)
    )
    return [_record(r) for r in rows]


async def finished_since(db: Database, since: datetime) -> list[tuple[str, str]]:
    """(completed_at, state) of every task finished since `since`: throughput and failure rates."""
    rows = await db.fetchall(
        "SELECT completed_at, state FROM tasks WHERE completed_at >= ? ORDER BY completed_at", (iso(since),)
    )
    return [(r[0], r[1]) for r in rows]

