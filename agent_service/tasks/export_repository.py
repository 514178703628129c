"""The `tasks` table read for an export (tasks/export.py): every matching row, a page at a time,
apart from tasks/repository.py because an export walks the whole table where every other read
takes one page or one row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import iso
from agent_service.kit.db import Database
from agent_service.kit.pagination import where as where_sql
from agent_service.tasks.repository import KEYSET, TaskRecord


async def export_pages(
    db: Database, *, owner_id: str | None, state: str | None, agent_id: str | None, since: datetime | None,
    until: datetime | None, size: int,
) -> AsyncIterator[list[TaskRecord]]:
    """Every task matching the filters (`since` ≤ created_at < `until`), newest first, `size` rows per
    read: an export of any length holds one page. Each read starts after the last row of the one
    before (keyset), so tasks created meanwhile, newer than the first row, neither shift nor repeat
    a row. `owner_id=None`: everyone's (admins)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("owner_id", owner_id), ("state", state), ("agent_id", agent_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    for clause, at in (("created_at >= ?", since), ("created_at < ?", until)):
        if at is not None:
            where.append(clause)
            params.append(iso(at))
    cursor: str | None = None
    while True:
        clauses, args = list(where), list(params)
        if (after := KEYSET.after(cursor)) is not None:
            clauses.append(after.sql)
            args += after.params
        sql = f"SELECT * FROM tasks{where_sql(clauses)}{KEYSET.order_limit}"  # noqa: S608 (placeholders only)
        rows = await db.fetchall(sql, (*args, size + 1))
        page, cursor = KEYSET.page(rows, size)
        if page:
            yield [msgspec.convert(dict(r), TaskRecord) for r in page]
        if cursor is None:
            return
