"""The delivering side, run by any worker (webhooks/jobs.py): a pass turns `task_events_outbox`
rows into deliveries, then attempts every due delivery, until nothing is left due.

Nothing here holds state between passes: a delivery is a row, claimed for one attempt at a time
(the claim expires, so a worker that dies mid-attempt only delays it), and its next attempt is
scheduled in the row with WEBHOOK_RETRY_SCHEDULE (±10 % jitter). So restarts lose nothing, and
any number of workers share the work. Every time here is `deps.clock()` (tests move it); only
the `webhook-timestamp` header is wall time, because receivers check it against theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timedelta

import msgspec

from agent_service.agents.schemas import StoredTaskWebhook
from agent_service.clock import utcnow
from agent_service.errors import AppError, NotFound
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.tasks import service as tasks
from agent_service.webhooks import delivery, outbox, signing
from agent_service.webhooks import repository as store
from agent_service.webhooks.repository import DeliveryRecord, SubscriptionRecord
from agent_service.webhooks.schemas import BATCH_COMPLETED, AttemptRecord, DispatchPass, OutboxRow, Outcome
from agent_service.webhooks.service import message, new_delivery

log = get_logger(__name__)
OUTBOX_BATCH = 100
CLAIM_EXTRA = timedelta(seconds=60)  # a claim outlives its attempt (WEBHOOK_TIMEOUT) by this much
PASS_BUDGET = 30.0  # s: a pass stops taking new work after this (the next one goes on)
JITTER = 0.1


async def _deliveries_for(deps: Deps, row: OutboxRow, owners: dict[str, list[SubscriptionRecord]]
                          ) -> list[DeliveryRecord] | None:
    """The deliveries of one task event; None to leave the row for a later pass (Redis is down,
    so the task's result cannot be read into the message yet). `owners`: the pass's cache of
    each owner's subscriptions, so a drain of one user's tasks reads them once."""
    if row.owner_id is None:
        return []
    if row.owner_id not in owners:
        owners[row.owner_id] = await store.subscriptions_for(deps.db, owner_id=row.owner_id, task_id=None)
    subs = [s for s in owners[row.owner_id] if row.event in s.events and s.task_id in (None, row.task_id)]
    try:
        record = await tasks.get_record(deps, row.task_id, owner_id=None, is_admin=True)
    except NotFound:
        return []
    own = msgspec.json.decode(record.webhook, type=StoredTaskWebhook) if record.webhook else None
    if own is not None and row.event not in own.events:
        own = None
    batch = await _batch_completed(deps, row.owner_id, record.batch_id) if record.batch_id else []
    if not subs and own is None:
        return batch
    status = await tasks.status_of(deps, record)
    if not status.live:
        return None
    body = message(row.event, row.created_at, msgspec.to_builtins(status))
    made = [new_delivery(deps, owner_id=row.owner_id, event=row.event, url=s.url, payload=body,
                         subscription_id=s.id, task_id=row.task_id) for s in subs]
    if own is not None:
        made.append(new_delivery(deps, owner_id=row.owner_id, event=row.event, url=own.url, payload=body,
                                 subscription_id=None, task_id=row.task_id))
    return made + batch


async def _batch_completed(deps: Deps, owner_id: str, batch_id: str) -> list[DeliveryRecord]:
    """`batch.completed` once the batch's last task has finished (any of its tasks' events may be
    the one that sees it, on any worker, more than once): each receiver's delivery id is derived
    from the batch, and a delivery id is written once, so the event is sent exactly once."""
    done = await tasks.batch_completion(deps, batch_id)
    if done is None:
        return []
    status, owner, hook = done
    body = message(BATCH_COMPLETED, status.completed_at or deps.clock(), msgspec.to_builtins(status))
    subs = [s for s in await store.subscriptions_for(deps.db, owner_id=owner, task_id="")
            if BATCH_COMPLETED in s.events]

    def fixed(receiver: str) -> str:
        return "msg_" + hashlib.sha256(f"{batch_id}:{receiver}".encode()).hexdigest()[:32]

    made = [new_delivery(deps, owner_id=owner, event=BATCH_COMPLETED, url=s.url, payload=body, subscription_id=s.id,
                         task_id=None, batch_id=batch_id, delivery_id=fixed(s.id)) for s in subs]
    if hook is not None:
        made.append(new_delivery(deps, owner_id=owner, event=BATCH_COMPLETED, url=hook.url, payload=body,
                                 subscription_id=None, task_id=None, batch_id=batch_id, delivery_id=fixed("own")))
    return made


async def expand_outbox(deps: Deps) -> int:
    """Task events → deliveries; how many events were taken."""
    taken = 0
    owners: dict[str, list[SubscriptionRecord]] = {}
    nothing: list[int] = []  # rows that make no delivery: deleted together
    for row in await outbox.outbox_batch(deps.db, limit=OUTBOX_BATCH):
        made = await _deliveries_for(deps, row, owners)
        if made is None:
            break  # in order: a later event of the same task must not overtake this one
        if not made:
            nothing.append(row.id)
            taken += 1
        elif await outbox.take_outbox(deps.db, row.id, made):
            taken += 1
    await outbox.drop_outbox(deps.db, nothing)
    return taken


def next_delay(deps: Deps, step: int) -> float | None:
    """Seconds until the retry after the `step`-th failure (0-based), or None: give up."""
    delays = deps.settings.webhook_retry_delays
    if step >= len(delays):
        return None
    return delays[step] * (1 - JITTER + 2 * JITTER * deps.rng())


async def _signing(deps: Deps, d: DeliveryRecord, now: datetime) -> tuple[str, list[str]] | str:
    """(url, secrets) to send `d` with, or why it cannot be sent any more."""
    if d.subscription_id is not None:
        sub = await store.get_subscription(deps.db, d.subscription_id, owner_id=None)
        if sub is None:
            return "The subscription was deleted."
        if not sub.enabled:
            return "The subscription is disabled."
        keep_old = sub.previous_secret and sub.previous_expires_at and sub.previous_expires_at > now
        return sub.url, [sub.secret, *([sub.previous_secret] if keep_old and sub.previous_secret else [])]
    if d.batch_id is not None:
        secret = await tasks.batch_webhook_secret(deps, d.batch_id)
        return (d.url, [secret]) if secret else "The batch no longer exists."
    try:
        record = await tasks.get_record(deps, d.task_id or "", owner_id=None, is_admin=True)
    except NotFound:
        return "The task no longer exists."
    if not record.webhook:
        return "The task has no webhook."
    return d.url, [msgspec.json.decode(record.webhook, type=StoredTaskWebhook).secret]


async def _count(deps: Deps, what: str, event: str) -> None:
    if deps.metrics is not None:
        await deps.metrics.webhook(what, event)


async def attempt(deps: Deps, d: DeliveryRecord) -> bool:
    """One attempt of a claimed delivery, recorded with what follows from it; True if delivered."""
    now = deps.clock()
    how = await _signing(deps, d, now)
    if isinstance(how, str):
        await store.abandon(deps.db, d.id, reason=how, now=now)
        return False
    url, keys = how
    body = d.payload.encode()
    # wall time, not deps.clock(): receivers refuse a timestamp far from their own clock
    headers = signing.headers(keys, d.id, int(utcnow().timestamp()), body)
    await _count(deps, "attempted", d.event)
    result = await delivery.send(deps, url, body, headers)
    await _count(deps, "succeeded" if result.ok else "failed", d.event)
    done = deps.clock()
    delay = None if result.ok else next_delay(deps, d.step)
    state = "succeeded" if result.ok else ("pending" if delay is not None else "failed")
    error = result.error
    if state == "failed":
        error = f"Gave up after {d.attempts} attempts. Last: {error}"
    hours = deps.settings.webhook_disable_after_hours
    outcome = Outcome(
        attempt=AttemptRecord(delivery_id=d.id, attempt=d.attempts, started_at=now, status_code=result.status_code,
                              latency_ms=result.latency_ms, error=error, response=result.response),
        state=state, step=d.step + (0 if result.ok else 1), now=done,
        next_attempt_at=done + timedelta(seconds=delay) if delay is not None else None)
    disabled = await store.finish_attempt(
        deps.db, d, outcome, disable_before=done - timedelta(hours=hours),
        disable_reason=f"Every delivery failed for {hours:g} h (last: {result.error}); fix the receiver, then "
        "enable the subscription again (PATCH enabled=true).")
    log.info("webhook.attempt", delivery_id=d.id, subscription_id=d.subscription_id, attempt=d.attempts,
             ok=result.ok, status=result.status_code, latency_ms=result.latency_ms, state=state)
    if disabled:
        log.warning("webhook.subscription_disabled", subscription_id=d.subscription_id)
    return result.ok


async def deliver_due(deps: Deps) -> tuple[int, int]:
    """Attempt the deliveries due now, WEBHOOK_CONCURRENCY at a time; (attempted, delivered)."""
    now = deps.clock()
    until = now + timedelta(seconds=deps.settings.webhook_timeout) + CLAIM_EXTRA
    claimed = await store.claim_due(deps.db, now=now, until=until, limit=deps.settings.webhook_concurrency)
    results = await asyncio.gather(*(attempt(deps, d) for d in claimed), return_exceptions=True)
    for r in results:  # each attempt ran to its end; a store failure then ends the pass
        if isinstance(r, BaseException):
            raise r
    return len(claimed), sum(r is True for r in results)


async def run_pass(deps: Deps) -> DispatchPass:
    """Everything due, until nothing is or PASS_BUDGET is spent."""
    done = DispatchPass()
    deadline = time.monotonic() + PASS_BUDGET
    while time.monotonic() < deadline:
        try:
            events = await expand_outbox(deps)
            attempted, delivered = await deliver_due(deps)
        except AppError:  # a store is down: the rows wait for a later pass
            log.warning("webhook.pass_unavailable")
            break
        done.events += events
        done.attempts += attempted
        done.succeeded += delivered
        if not events and not attempted:
            break
    return done
