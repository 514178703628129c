"""Usage as the other domains use it: before a submission, `reserve` (429 `budget_exceeded`
before anything is queued); at a run's end, `settle` (the run's usage recorded once, the hold
replaced by what was used) or `release` (the run ended without usage: failed, cancelled); and the
reports of `GET /usage`.

A budget is the user's own (`monthly_token_budget`, set by an admin) or else their tier's
(BUDGET_TOKENS_<TIER>); 0 is none, and then nothing here touches Redis before a run. A budgeted
user's submission holds BUDGET_RESERVE_TOKENS per call (usage/budget.py: atomic in Redis, so
concurrent submissions cannot overrun); with Redis down it is refused (503: fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec

from agent_service.agents.schemas import USAGE_KEY, Usage
from agent_service.errors import AppError, Forbidden, ServiceUnavailable, TooManyRequests, ValidationFailed
from agent_service.identity import service as identity
from agent_service.kit import ids
from agent_service.kit.coalesce import Coalescer
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.usage import repository as store
from agent_service.usage.budget import NEEDS_SEED, Budgets
from agent_service.usage.schemas import BudgetStatus, UsageGroup, UsageQuery, UsageRecord, UsageReport

log = get_logger(__name__)
HOLD_HOURS = 24  # a hold nobody settles lapses this long after its task's time to run
SETTLE_RETRIES = (1.0, 5.0, 30.0)  # s: a settle that met Redis down is tried again this often
_pending: set[asyncio.Task[None]] = set()


def _budgets(deps: Deps) -> Budgets:
    return Budgets(deps.redis, prefix=deps.prefix)


def budgets(deps: Deps) -> Budgets:
    return deps.part(_budgets)


def month_start(at: datetime, *, months: int = 0) -> datetime:
    at = at.astimezone(UTC)
    index = at.year * 12 + at.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def limit_for(deps: Deps, owner_id: str) -> int:
    """The user's monthly token budget; 0: none."""
    tier, own = await identity.token_budget(deps, owner_id)
    if own is not None:
        return own
    return int(getattr(deps.settings, f"budget_tokens_{tier}", 0) or 0)


def _refused(deps: Deps, limit: int, used: int, reserved: int, asked: int) -> TooManyRequests:
    now = deps.clock()
    resets = month_start(now, months=1)
    wait = max(1, math.ceil((resets - now).total_seconds()))
    left = max(0, limit - used - reserved)
    return TooManyRequests(
        f"This would exceed your monthly token budget: {limit} tokens, {used} used and {reserved} held by "
        f"submissions still running; this one holds {asked} and {left} are left. The budget resets at "
        f"{resets.isoformat().replace('+00:00', 'Z')}.", code="budget_exceeded", headers={"Retry-After": str(wait)})


async def reserve(deps: Deps, owner_id: str, refs: Sequence[str], *, run_at: datetime | None = None) -> bool:
    """Hold BUDGET_RESERVE_TOKENS for each of `refs` (one submission's tasks: all or none), or raise
    429 `budget_exceeded`; False if the user has no budget (nothing held)."""
    limit = await limit_for(deps, owner_id)
    if limit <= 0 or not refs:
        return False
    now = deps.clock()
    month = store.month_of(now.astimezone(UTC))
    each = deps.settings.budget_reserve_tokens
    deadline = int(((run_at or now) + timedelta(hours=HOLD_HOURS)).timestamp() * 1000)
    try:
        for _ in range(2):
            got = await budgets(deps).reserve(owner_id, month, refs, limit=limit, each=each,
                                              now_ms=int(now.timestamp() * 1000), deadline_ms=deadline)
            if got.ok != NEEDS_SEED:
                break
            await budgets(deps).seed(owner_id, month, await store.used_in_month(deps.db, owner_id, month),
                                     now_ms=int(now.timestamp() * 1000))
    except ServiceUnavailable:  # budgets are enforced or nothing runs: fail closed
        raise ServiceUnavailable("Token budgets cannot be checked right now; try again shortly.",
                                 code="budget_unavailable", headers={"Retry-After": "5"}) from None
    if got.ok != 1:
        raise _refused(deps, limit, got.used, got.reserved, each * len(refs))
    return True


@contextlib.asynccontextmanager
async def holding(deps: Deps, owner_id: str, refs: Sequence[str], *, run_at: datetime | None = None,
                  ) -> AsyncIterator[None]:
    """`reserve` for a submission's tasks around the work that queues them (429 before anything
    is); if that work fails or is cancelled, nothing was queued and the holds go back."""
    held = await reserve(deps, owner_id, refs, run_at=run_at)
    try:
        yield
    except BaseException:  # broad: nothing queued, however it failed (an error, a cancel)
        if held:
            await release(deps, owner_id, refs)
        raise


async def release(deps: Deps, owner_id: str | None, refs: Sequence[str]) -> None:
    """Holds given back unused (a submission that was not queued after all, a run that failed or
    was cancelled). Best effort: a hold not given back lapses by itself."""
    if owner_id is None or not refs:
        return
    month = store.month_of(deps.clock().astimezone(UTC))
    with contextlib.suppress(AppError):
        if await limit_for(deps, owner_id) > 0:  # nothing is held for a user without a budget
            await budgets(deps).settle(owner_id, month, refs, used=0)


def usage_in(metadata: dict[str, Any]) -> Usage | None:
    raw = metadata.get(USAGE_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return msgspec.convert(raw, Usage)
    except msgspec.ValidationError:
        return None


def cost_of(deps: Deps, model: str | None, usage: Usage) -> float | None:
    price = deps.settings.model_price_table.get(model or "")
    if price is None:
        return None
    return round((usage.input_tokens * price[0] + usage.output_tokens * price[1]) / 1_000_000, 9)


async def settle(deps: Deps, *, owner_id: str | None, agent_id: str, metadata: dict[str, Any],
                 task_id: str | None = None, api_key_id: str | None = None, ref: str | None = None) -> None:
    """A run's end with its output's metadata: its usage recorded (once per task), counted in the
    metrics, and its hold replaced by what it used. Never raises: the run's result stands."""
    if owner_id is None:
        return
    usage = usage_in(metadata) or Usage()
    model = metadata.get("model") if isinstance(metadata.get("model"), str) else None
    now = deps.clock()
    rec = UsageRecord(id=task_id or ref or ids.time_ordered(), owner_id=owner_id, api_key_id=api_key_id,
                      task_id=task_id, agent_id=agent_id, model=model, input_tokens=usage.input_tokens,
                      output_tokens=usage.output_tokens, cost=cost_of(deps, model, usage), at=now)
    try:
        fresh = await deps.part(_recorder).add(rec)
    except AppError:
        log.warning("usage.not_recorded", task_id=task_id, owner_id=owner_id)
        fresh = True  # the budget still counts it
    if not fresh:
        return  # settled before (a repeated end of the same task)
    if deps.metrics is not None:
        with contextlib.suppress(AppError):
            await deps.metrics.usage(model or agent_id, rec.input_tokens, rec.output_tokens, rec.cost)
    refs = [r for r in (task_id, ref) if r]
    try:
        if await limit_for(deps, owner_id) <= 0:
            return  # no budget: no hold and no counters to keep (a budget set later is seeded from SQL)
        await budgets(deps).settle(owner_id, store.month_of(now.astimezone(UTC)), refs,
                                   used=rec.input_tokens + rec.output_tokens)
    except AppError:  # Redis is away: the hold stays (the budget is held back, not overrun) until retried
        _later(deps, owner_id, store.month_of(now.astimezone(UTC)), refs, rec.input_tokens + rec.output_tokens)


class _Row:
    __slots__ = ("fresh", "rec")

    def __init__(self, rec: UsageRecord) -> None:
        self.rec, self.fresh = rec, False


class _Recorder:
    """Usage rows of runs that end at the same moment share one INSERT (kit/coalesce.py)."""

    def __init__(self, deps: Deps) -> None:
        self._db = deps.db
        self._batches: Coalescer[_Row] = Coalescer(self._write)

    async def add(self, rec: UsageRecord) -> bool:
        """False if the run's row was there already."""
        row = _Row(rec)
        await self._batches.submit(row)
        return row.fresh

    async def _write(self, rows: list[_Row]) -> list[BaseException | None]:
        written = await store.add_many(self._db, [row.rec for row in rows])
        for row in rows:  # the same run twice in one batch: its first row is the one written
            row.fresh = row.rec.id in written
            written.discard(row.rec.id)
        return [None] * len(rows)


def _recorder(deps: Deps) -> _Recorder:
    return _Recorder(deps)


class Job(Protocol):
    """What `settle_task` reads of a task's job (tasks.schemas.AgentJob)."""

    @property
    def task_id(self) -> str: ...
    @property
    def owner_id(self) -> str | None: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def api_key_id(self) -> str | None: ...


async def settle_task(deps: Deps, job: Job, metadata: dict[str, Any]) -> None:
    """`settle` for a background run that succeeded (the runner's one line)."""
    await settle(deps, owner_id=job.owner_id, agent_id=job.agent_id, metadata=metadata, task_id=job.task_id,
                 api_key_id=job.api_key_id)


def _later(deps: Deps, owner_id: str, month: str, refs: list[str], used: int) -> None:
    async def again() -> None:
        for delay in SETTLE_RETRIES:
            await asyncio.sleep(delay)
            with contextlib.suppress(AppError):
                await budgets(deps).settle(owner_id, month, refs, used=used)
                return
        log.warning("usage.settle_lost", owner_id=owner_id, refs=refs[:3])

    task = asyncio.create_task(again())
    _pending.add(task)
    task.add_done_callback(_pending.discard)


class SyncMeter:
    """agents.service.Meter for synchronous calls: the same budgets and records as tasks'."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def before(self, owner_id: str, ref: str) -> None:
        await reserve(self._deps, owner_id, [ref])

    async def after(self, owner_id: str, ref: str, agent_id: str, metadata: dict[str, Any] | None) -> None:
        if metadata is None:
            await release(self._deps, owner_id, [ref])
        else:
            await settle(self._deps, owner_id=owner_id, agent_id=agent_id, metadata=metadata, ref=ref)


async def report(deps: Deps, q: UsageQuery, *, owner_id: str, is_admin: bool) -> UsageReport:
    if not is_admin and q.owner not in (None, owner_id):
        raise Forbidden("Only admins may read other users' usage.", code="insufficient_scope")
    if q.since is not None and q.until is not None and q.since >= q.until:
        raise ValidationFailed("`since` must be before `until`.",
                               errors=[{"path": "query.until", "message": "Must be later than `since`"}])
    who = (q.owner if is_admin else owner_id)
    items = await store.grouped(deps.db, group_by=q.group_by, owner_id=who, since=q.since, until=q.until)
    costs = [g.cost for g in items if g.cost is not None]
    total = UsageGroup(key=None, runs=sum(g.runs for g in items), input_tokens=sum(g.input_tokens for g in items),
                       output_tokens=sum(g.output_tokens for g in items),
                       total_tokens=sum(g.total_tokens for g in items), cost=round(sum(costs), 6) if costs else None)
    return UsageReport(group_by=q.group_by, owner_id=who, items=items, total=total,
                       budget=await budget_status(deps, who) if who else None)


async def budget_status(deps: Deps, owner_id: str) -> BudgetStatus:
    now = deps.clock()
    month = store.month_of(now.astimezone(UTC))
    limit = await limit_for(deps, owner_id)
    used, reserved = await store.used_in_month(deps.db, owner_id, month), 0
    if limit > 0:
        with contextlib.suppress(AppError):  # Redis away: what SQL knows, nothing held
            live = await budgets(deps).counters(owner_id, month)
            if live is not None:
                used, reserved = max(used, live[0]), live[1]
    return BudgetStatus(month=month, limit=limit or None, used=used, reserved=reserved,
                        remaining=max(0, limit - used - reserved) if limit > 0 else None,
                        resets_at=month_start(now, months=1))
