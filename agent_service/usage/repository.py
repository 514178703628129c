"""The `usage` table (SQL in, Structs out): one row per run, written once; sums by group."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent_service.clock import iso
from agent_service.kit.db import Database
from agent_service.kit.pagination import where as where_sql
from agent_service.usage.schemas import UsageGroup, UsageRecord

# what a report groups by: a column, or the day of `at` (fixed-width ISO text: its first 10 chars)
GROUPS = {"day": "substr(at, 1, 10)", "agent": "agent_id", "key": "api_key_id", "model": "model"}


def month_of(at: datetime) -> str:
    return at.strftime("%Y-%m")


async def add_many(db: Database, recs: list[UsageRecord]) -> set[str]:
    """One INSERT for all; the ids written (a row already there — a run settled twice — counts once)."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(recs))
    params: list[Any] = []
    for rec in recs:
        params += (rec.id, rec.owner_id, rec.api_key_id, rec.task_id, rec.agent_id, rec.model, rec.input_tokens,
                   rec.output_tokens, rec.cost, month_of(rec.at), iso(rec.at))
    rows = await db.fetchall(
        "INSERT INTO usage (id, owner_id, api_key_id, task_id, agent_id, model, input_tokens, output_tokens, cost,"
        f" month, at) VALUES {values} ON CONFLICT DO NOTHING RETURNING id", params)
    return {r[0] for r in rows}


async def used_in_month(db: Database, owner_id: str, month: str) -> int:
    row = await db.fetchone("SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM usage"
                            " WHERE owner_id = ? AND month = ?", (owner_id, month))
    return int(row[0]) if row else 0


async def grouped(db: Database, *, group_by: str, owner_id: str | None, since: datetime | None,
                  until: datetime | None) -> list[UsageGroup]:
    """Sums per group (oldest day, or largest total, first); `owner_id=None`: everyone's."""
    where: list[str] = []
    params: list[Any] = []
    if owner_id is not None:
        where.append("owner_id = ?")
        params.append(owner_id)
    for clause, at in (("at >= ?", since), ("at < ?", until)):
        if at is not None:
            where.append(clause)
            params.append(iso(at))
    column = GROUPS[group_by]
    order = "g" if group_by == "day" else "total DESC, g"
    rows = await db.fetchall(
        f"SELECT {column} AS g, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
        f" SUM(input_tokens + output_tokens) AS total, SUM(cost) FROM usage{where_sql(where)}"
        f" GROUP BY {column} ORDER BY {order} LIMIT 1000", params)
    return [UsageGroup(key=r[0], runs=int(r[1]), input_tokens=int(r[2]), output_tokens=int(r[3]),
                       total_tokens=int(r[4]), cost=None if r[5] is None else round(float(r[5]), 6)) for r in rows]
