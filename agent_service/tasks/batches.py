"""Batches: many invoke-async bodies submitted at once, all or nothing, then followed as one.

Every item is checked exactly as a single invoke-async would be (schema, agent input, session,
webhook URL, schedule) before anything is written; the first bad item refuses the batch with the
same status a single call would get, its paths rewritten under `$.items[i]`. Then the records go
in in one transaction and the jobs are queued (tasks/lifecycle.submit_batch: a refused job takes
the whole batch back out). A batch's counts and state are read from its tasks, so they are never
stale; `batch.completed` is fired by the webhooks domain when it sees the batch's last task finish
(its outbox event), with one delivery id per receiver and batch, so it is sent exactly once.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec

from agent_service.agents.schemas import StoredTaskWebhook
from agent_service.agents.service import resolve_agent
from agent_service.errors import AppError, NotFound, ValidationFailed
from agent_service.kit import ssrf
from agent_service.kit.deps import Deps
from agent_service.kit.idempotency import IdempotencyStore, fingerprint
from agent_service.logging import get_logger
from agent_service.tasks import batch_lifecycle, lifecycle, policy, submit
from agent_service.tasks import batch_repository as store
from agent_service.tasks.batch_repository import BatchRecord
from agent_service.tasks.batch_schemas import (
    BatchAccepted,
    BatchCounts,
    BatchPage,
    BatchQuery,
    BatchRequest,
    BatchState,
    BatchStatus,
)
from agent_service.tasks.schemas import FINISHED_STATES
from agent_service.usage import service as usage

log = get_logger(__name__)
BATCH_EVENTS = ["batch.completed"]
RUNNING_STATES = ("STARTED", "RETRY")


def status_url(deps: Deps, batch_id: str) -> str:
    path = f"/api/v1/batches/{batch_id}"
    base = deps.settings.public_base_url
    return f"{base.rstrip('/')}{path}" if base else path


def _under(exc: AppError, index: int) -> AppError:
    """The item's error as the batch's: the same status and code, its paths under `$.items[i]`."""
    prefix = f"$.items[{index}]"
    errors = [{**e, "path": prefix + str(e.get("path", "$"))[1:]} for e in exc.errors] or [
        {"path": prefix, "message": exc.detail}]
    return type(exc)(f"items[{index}]: {exc.detail}", errors=errors, headers=exc.headers, code=exc.code)


async def submit_batch(
    deps: Deps, agent_id: str, body: BatchRequest, *, owner_id: str, request_id: str | None,
    idempotency_key: str | None, tier: str | None, is_admin: bool,
    charge: Callable[[int], Awaitable[None]] | None = None, api_key_id: str | None = None,
) -> tuple[BatchAccepted, bool]:
    """Queue every item or none; (answer, replayed). `charge(n)` is called once every item has
    passed and before anything is written (a replayed answer is not charged again): the caller's
    limits take the batch's size there."""
    cap = deps.settings.batch_max_items
    if len(body.items) > cap:
        raise ValidationFailed(f"A batch holds at most {cap} items (BATCH_MAX_ITEMS); split it.",
                               errors=[{"path": "$.items", "message": f"At most {cap} items"}])
    job_tier = policy.job_tier(tier, is_admin=is_admin, default=deps.settings.default_tier)
    agent = resolve_agent(deps, agent_id)
    runs_at: list[datetime | None] = []
    for i, item in enumerate(body.items):
        try:
            runs_at.append(await submit.check(deps, agent, item, owner_id=owner_id))
        except AppError as exc:
            raise _under(exc, i) from None
    if body.webhook is not None:
        await ssrf.validate(deps, body.webhook.url, path="$.webhook.url")

    async def go() -> BatchAccepted:
        if charge is not None:  # after the checks, before anything is written; not for a replay
            await charge(len(body.items))
        return await _queue(deps, agent.name, body, runs_at, owner_id=owner_id, request_id=request_id, tier=job_tier,
                            api_key_id=api_key_id)

    if idempotency_key is None:
        return await go(), False
    idem = IdempotencyStore(deps.redis, prefix=deps.prefix)
    fp = fingerprint("batch", agent.name, msgspec.json.encode(body))
    return await idem.once(owner_id, idempotency_key, fp, go, answer=BatchAccepted)


async def _queue(deps: Deps, agent_name: str, body: BatchRequest, runs_at: list[datetime | None], *, owner_id: str,
                 request_id: str | None, tier: str, api_key_id: str | None) -> BatchAccepted:
    agent = resolve_agent(deps, agent_name)
    subs = []
    for item, run_at in zip(body.items, runs_at, strict=True):
        sub, _ = submit.build(deps, agent, item, run_at, owner_id=owner_id, request_id=request_id, tier=tier,
                              api_key_id=api_key_id)
        subs.append(sub)
    ids = [s.task_id for s in subs]
    latest = max((r for r in runs_at if r is not None), default=None)
    hook = None
    if body.webhook is not None:
        hook = StoredTaskWebhook(url=body.webhook.url, events=BATCH_EVENTS,
                                 secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
    batch = BatchRecord(id=f"batch_{uuid.uuid4().hex}", owner_id=owner_id, agent_id=agent.name, size=len(subs),
                        webhook=msgspec.json.encode(hook).decode() if hook else None, request_id=request_id,
                        created_at=deps.clock(), cancelled_at=None, completed_at=None)
    async with usage.holding(deps, owner_id, ids, run_at=latest):  # the whole batch fits, or 429 and nothing queued
        await batch_lifecycle.submit_batch(deps, batch, subs)
    log.info("batch.queued", batch_id=batch.id, agent=agent.name, size=batch.size)
    return BatchAccepted(batch_id=batch.id, task_ids=[s.task_id for s in subs], status_url=status_url(deps, batch.id),
                         webhook_secret=hook.secret if hook else None)


async def _own(deps: Deps, batch_id: str, *, owner_id: str, is_admin: bool) -> BatchRecord:
    rec = await store.get(deps.db, batch_id) if len(batch_id) <= 64 else None
    if rec is None or (not is_admin and rec.owner_id != owner_id):  # someone else's: not found
        raise NotFound(f"No batch with id {batch_id[:64]!r}.", code="batch_not_found")
    return rec


def view(rec: BatchRecord, counts: dict[str, int], running: int = 0) -> BatchStatus:
    """`running`: the summed live progress of the batch's running tasks."""
    finished = sum(counts.get(s, 0) for s in FINISHED_STATES)
    state: BatchState = "cancelled" if rec.cancelled_at else ("completed" if finished >= rec.size else "running")
    progress = min(100, (finished * 100 + running) // rec.size) if rec.size else 100
    return BatchStatus(
        batch_id=rec.id, agent_id=rec.agent_id, state=state, size=rec.size, finished=finished, progress=progress,
        counts=msgspec.convert({k: v for k, v in counts.items() if k in BatchCounts.__struct_fields__}, BatchCounts),
        created_at=rec.created_at, cancelled_at=rec.cancelled_at, completed_at=rec.completed_at)


async def _running_progress(deps: Deps, batch_id: str, counts: dict[str, int]) -> int:
    if not any(counts.get(s) for s in RUNNING_STATES):
        return 0
    ids = await store.running_ids(deps.db, batch_id)
    try:
        live = await lifecycle.live(deps).progress_many(ids)
    except AppError:  # Redis is down: running tasks count 0 (SQL still has the states)
        return 0
    return sum(live.values())


async def _finished(deps: Deps, rec: BatchRecord, counts: dict[str, int]) -> BatchRecord:
    """The record with its completion time once every task has finished (its last task's end:
    the same whether or not the webhooks domain has seen it yet)."""
    if rec.completed_at is not None or sum(counts.get(s, 0) for s in FINISHED_STATES) < rec.size:
        return rec
    at = await store.last_finished_at(deps.db, rec.id)
    return msgspec.structs.replace(rec, completed_at=at)


async def get_status(deps: Deps, batch_id: str, *, owner_id: str, is_admin: bool) -> BatchStatus:
    rec = await _own(deps, batch_id, owner_id=owner_id, is_admin=is_admin)
    counts = await store.counts(deps.db, rec.id)
    return view(await _finished(deps, rec, counts), counts, await _running_progress(deps, rec.id, counts))


async def list_batches(deps: Deps, q: BatchQuery, *, owner_id: str) -> BatchPage:
    page, nxt = await store.list_page(deps.db, owner_id=owner_id, limit=q.limit, cursor=q.cursor)
    counts = await store.counts_many(deps.db, [r.id for r in page])
    return BatchPage(items=[view(await _finished(deps, r, counts[r.id]), counts[r.id]) for r in page], next_cursor=nxt)


async def cancel(deps: Deps, batch_id: str, *, owner_id: str, is_admin: bool) -> BatchStatus:
    """Every unfinished task is asked to stop (queued ones are cancelled at once); a finished or
    already cancelled batch is left as it is. Idempotent."""
    rec = await _own(deps, batch_id, owner_id=owner_id, is_admin=is_admin)
    unfinished = await store.unfinished_ids(deps.db, rec.id)
    await batch_lifecycle.cancel_batch(deps, rec.id, unfinished)
    # the tasks cancelled while queued never run: their budget holds go now (a running one's
    # goes when its run ends)
    await usage.release(deps, rec.owner_id, await store.revoked_unstarted(deps.db, unfinished))
    log.info("batch.cancelled", batch_id=rec.id)
    return await get_status(deps, rec.id, owner_id=owner_id, is_admin=is_admin)


async def batch_completion(deps: Deps, batch_id: str) -> tuple[BatchStatus, str, StoredTaskWebhook | None] | None:
    """For the webhooks domain, when a task of the batch has finished: None while any task is
    unfinished; else the final status, the owner and the batch's own webhook (the completion time
    is recorded the first time it is seen)."""
    rec = await store.get(deps.db, batch_id)
    if rec is None:
        return None
    counts = await store.counts(deps.db, batch_id)
    if sum(counts.get(s, 0) for s in FINISHED_STATES) < rec.size:
        return None
    if rec.completed_at is None:
        rec = await _finished(deps, rec, counts)
        await store.mark_completed(deps.db, batch_id, at=rec.completed_at or deps.clock())
    hook = msgspec.json.decode(rec.webhook, type=StoredTaskWebhook) if rec.webhook else None
    return view(rec, counts), rec.owner_id, hook


async def batch_webhook_secret(deps: Deps, batch_id: str) -> str | None:
    """The signing secret of the batch's own webhook (the delivery side)."""
    rec = await store.get(deps.db, batch_id)
    if rec is None or rec.webhook is None:
        return None
    return msgspec.json.decode(rec.webhook, type=StoredTaskWebhook).secret
