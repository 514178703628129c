"""Usage bodies: the record of one run, the report (`GET /usage`), and a budget as its owner sees it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agent_service.kit.schemas import Query

GroupBy = Literal["day", "agent", "key", "model"]
UsageTime = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339 with an offset


class UsageRecord(msgspec.Struct, kw_only=True):
    """One run that reported what it used (agents.schemas.Usage), as the `usage` table keeps it."""

    id: str  # the task's id (a background run: written once however often it is settled), else fresh
    owner_id: str
    api_key_id: str | None
    task_id: str | None
    agent_id: str
    model: str | None
    input_tokens: int
    output_tokens: int
    cost: float | None  # USD by MODEL_PRICES; None: no price for the model
    at: datetime


class UsageQuery(Query):
    group_by: Annotated[GroupBy, msgspec.Meta(description=(
        "`day` (UTC), `agent`, `key` (the API key that submitted; null: a token's) or `model`."))] = "day"
    since: Annotated[UsageTime | None, msgspec.Meta(description="Runs at or after this time.")] = None
    until: Annotated[UsageTime | None, msgspec.Meta(description="Runs before this time.")] = None
    owner: Annotated[Annotated[str, msgspec.Meta(max_length=64)] | None, msgspec.Meta(
        description="Admins: this user's usage (without it, everyone's).")] = None


class UsageGroup(msgspec.Struct, kw_only=True):
    key: str | None  # the day, agent, API key id or model (null: none recorded)
    runs: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None  # USD; null when no run of the group had a price


class BudgetStatus(msgspec.Struct, kw_only=True):
    month: str  # YYYY-MM (UTC)
    limit: int | None  # tokens this month; null: no budget
    used: int  # tokens used this month
    reserved: int  # held by submissions whose runs have not reported yet
    remaining: int | None
    resets_at: datetime  # the next month's start (UTC)


class UsageReport(msgspec.Struct, kw_only=True):
    group_by: GroupBy
    owner_id: str | None  # null: everyone's (admins)
    items: list[UsageGroup]
    total: UsageGroup
    budget: BudgetStatus | None  # one user's report: their budget this month
