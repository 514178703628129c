"""Webhooks as the API and other domains use them: subscriptions (per owner; someone else's is a
404), events to deliver, and the deliveries with their attempts.

For other domains (protocols' A2A push notifications, batches): `create_subscription(…, task_id=)`
subscribes to one task's events, `enqueue_event` sends any event (e.g. `batch.completed`) to the
owner's subscriptions, `list_deliveries` shows what was sent. Deliveries themselves happen in the
worker (webhooks/dispatch.py, driven by webhooks/jobs.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec

from agent_service.errors import Conflict, NotFound
from agent_service.kit import ssrf
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.tasks import service as tasks
from agent_service.webhooks import repository as store
from agent_service.webhooks import signing
from agent_service.webhooks.repository import DeliveryRecord, SubscriptionRecord
from agent_service.webhooks.schemas import (
    EVENT_TYPES,
    Attempt,
    Delivery,
    DeliveryPage,
    DeliveryQuery,
    SecretRotated,
    Subscription,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPage,
    SubscriptionQuery,
    SubscriptionUpdate,
    WebhookMessage,
)

log = get_logger(__name__)
ROTATION_GRACE = timedelta(hours=24)  # the old secret signs too for this long after a rotation


def wakeup(deps: Deps) -> Callable[[], None]:
    """Ask for a delivery pass soon (no I/O, never raising); the entry points provide it."""
    return lambda: None


def _not_found(sub_id: str) -> NotFound:
    return NotFound(f"No webhook subscription with id {sub_id[:64]!r}.", code="webhook_not_found")


def view(rec: SubscriptionRecord) -> Subscription:
    return Subscription(
        id=rec.id, url=rec.url, events=rec.events, description=rec.description, task_id=rec.task_id,
        enabled=rec.enabled, disabled_reason=rec.disabled_reason, disabled_at=rec.disabled_at,
        failing_since=rec.failing_since, secret_hint=signing.hint(rec.secret), created_at=rec.created_at,
        updated_at=rec.updated_at)


async def create_subscription(deps: Deps, owner_id: str, body: SubscriptionCreate, *,
                              task_id: str | None = None) -> SubscriptionCreated:
    """A subscription of `owner_id` (of one task's events only, with `task_id`); the URL is refused
    with a 422 on `$.url` unless the SSRF guard passes it. The secret is in this answer only."""
    await ssrf.validate(deps, body.url, path="$.url")
    if task_id is not None:  # only the owner's own task (someone else's is a 404, as everywhere)
        await tasks.get_record(deps, task_id, owner_id=owner_id, is_admin=False)
    now = deps.clock()
    rec = SubscriptionRecord(
        id=f"wh_{uuid.uuid4().hex}", owner_id=owner_id, url=body.url, events=list(body.events or EVENT_TYPES),
        description=body.description, task_id=task_id, secret=signing.new_secret(), previous_secret=None,
        previous_expires_at=None, enabled=True, disabled_reason=None, disabled_at=None, failing_since=None,
        created_at=now, updated_at=now)
    cap = deps.settings.webhook_max_subscriptions
    if not await store.create_subscription(deps.db, rec, max_live=cap):
        raise Conflict(f"You already hold {cap} webhook subscriptions (WEBHOOK_MAX_SUBSCRIPTIONS); delete one first.",
                       code="webhook_limit")
    log.info("webhook.subscribed", subscription_id=rec.id, events=rec.events, task_id=task_id)
    shown = view(rec)
    return SubscriptionCreated(**{f: getattr(shown, f) for f in Subscription.__struct_fields__}, secret=rec.secret)


async def _own(deps: Deps, owner_id: str, sub_id: str) -> SubscriptionRecord:
    rec = await store.get_subscription(deps.db, sub_id, owner_id=owner_id) if len(sub_id) <= 64 else None
    if rec is None:
        raise _not_found(sub_id)
    return rec


async def get_subscription(deps: Deps, owner_id: str, sub_id: str) -> Subscription:
    return view(await _own(deps, owner_id, sub_id))


async def list_subscriptions(deps: Deps, owner_id: str, q: SubscriptionQuery) -> SubscriptionPage:
    page, nxt = await store.list_subscriptions(deps.db, owner_id=owner_id, limit=q.limit, cursor=q.cursor)
    return SubscriptionPage(items=[view(r) for r in page], next_cursor=nxt)


async def update_subscription(deps: Deps, owner_id: str, sub_id: str, body: SubscriptionUpdate) -> Subscription:
    await _own(deps, owner_id, sub_id)
    values: dict[str, Any] = {k: v for k in ("url", "events", "description", "enabled")
                              if (v := getattr(body, k)) is not None}
    if "url" in values:
        await ssrf.validate(deps, values["url"], path="$.url")
    if values.get("enabled") is False:
        values["disabled_reason"] = "Disabled by its owner."
        values["disabled_at"] = deps.clock()
    if not await store.update_subscription(deps.db, sub_id, owner_id=owner_id, now=deps.clock(), values=values):
        raise _not_found(sub_id)
    return view(await _own(deps, owner_id, sub_id))


async def delete_subscription(deps: Deps, owner_id: str, sub_id: str) -> None:
    if not await store.delete_subscription(deps.db, sub_id, owner_id=owner_id):
        raise _not_found(sub_id)
    log.info("webhook.unsubscribed", subscription_id=sub_id)


async def rotate_secret(deps: Deps, owner_id: str, sub_id: str) -> SecretRotated:
    """A new secret; the old one keeps signing (beside it) for ROTATION_GRACE, so receivers can switch."""
    secret, now = signing.new_secret(), deps.clock()
    until = now + ROTATION_GRACE
    if not await store.rotate_secret(deps.db, sub_id, owner_id=owner_id, secret=secret, previous_until=until,
                                     now=now):
        raise _not_found(sub_id)
    log.info("webhook.secret_rotated", subscription_id=sub_id)
    return SecretRotated(id=sub_id, secret=secret, secret_hint=signing.hint(secret), previous_secret_expires_at=until)


def message(event: str, at: Any, data: dict[str, Any]) -> str:
    return msgspec.json.encode(WebhookMessage(type=event, timestamp=at, data=data)).decode()


def new_delivery(deps: Deps, *, owner_id: str, event: str, url: str, payload: str, subscription_id: str | None,
                 task_id: str | None, batch_id: str | None = None, delivery_id: str | None = None) -> DeliveryRecord:
    """`delivery_id`: a fixed id (written once: a second delivery with it is dropped)."""
    now = deps.clock()
    return DeliveryRecord(
        id=delivery_id or f"msg_{uuid.uuid4().hex}", owner_id=owner_id, subscription_id=subscription_id,
        task_id=task_id, batch_id=batch_id, event=event, url=url, payload=payload, state="pending", attempts=0,
        step=0, next_attempt_at=now, claimed_until=None, last_status=None, last_error=None, created_at=now,
        updated_at=now, completed_at=None)


async def enqueue_event(deps: Deps, owner_id: str, event: str, payload: dict[str, Any], *,
                        task_id: str | None = None) -> list[str]:
    """Send `event` (one of EVENT_TYPES; `payload` is the message's `data`) to each of the owner's
    enabled subscriptions that wants it (with `task_id`: also those for that task). Durable once
    this returns; the ids of the deliveries made."""
    if event not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event!r}")
    subs = await store.subscriptions_for(deps.db, owner_id=owner_id, task_id=task_id or "")
    body = message(event, deps.clock(), payload)
    made = [new_delivery(deps, owner_id=owner_id, event=event, url=s.url, payload=body, subscription_id=s.id,
                         task_id=task_id) for s in subs if event in s.events]
    if made:
        await store.add_deliveries(deps.db, made)
        deps.part(wakeup)()
    return [d.id for d in made]


async def _page(deps: Deps, rows: list[DeliveryRecord], nxt: str | None) -> DeliveryPage:
    items = []
    for d, attempts in await store.with_attempts(deps.db, [d.id for d in rows]):
        items.append(Delivery(
            id=d.id, event=d.event, subscription_id=d.subscription_id, task_id=d.task_id, url=d.url,
            state=d.state, attempts=d.attempts,  # type: ignore[arg-type]
            next_attempt_at=d.next_attempt_at if d.state == "pending" else None, last_status=d.last_status,
            last_error=d.last_error, created_at=d.created_at, completed_at=d.completed_at,
            history=[Attempt(**{f: getattr(a, f) for f in Attempt.__struct_fields__}) for a in attempts]))
    return DeliveryPage(items=items, next_cursor=nxt)


async def list_deliveries(deps: Deps, owner_id: str, sub_id: str, q: DeliveryQuery) -> DeliveryPage:
    """A subscription's deliveries, newest first, each with its attempts."""
    await _own(deps, owner_id, sub_id)
    rows, nxt = await store.list_deliveries(deps.db, owner_id=owner_id, subscription_id=sub_id, state=q.state,
                                            limit=q.limit, cursor=q.cursor)
    return await _page(deps, rows, nxt)


async def list_task_deliveries(deps: Deps, task_id: str, q: DeliveryQuery, *, owner_id: str,
                               is_admin: bool = False) -> DeliveryPage:
    """Every delivery about one task (its own `webhook`'s and its owner's subscriptions')."""
    record = await tasks.get_record(deps, task_id, owner_id=owner_id, is_admin=is_admin)
    rows, nxt = await store.list_deliveries(deps.db, owner_id=None, task_id=record.id, state=q.state,
                                            limit=q.limit, cursor=q.cursor)
    return await _page(deps, rows, nxt)


async def redeliver(deps: Deps, owner_id: str, sub_id: str, delivery_id: str) -> Delivery:
    """Send a delivery again now, under the same id, with the retry schedule from its start."""
    sub = await _own(deps, owner_id, sub_id)
    found = await store.get_delivery(deps.db, delivery_id) if len(delivery_id) <= 64 else None
    if found is None or found.subscription_id != sub.id:
        raise NotFound(f"No delivery with id {delivery_id[:64]!r} for this subscription.", code="delivery_not_found")
    if not sub.enabled:
        raise Conflict("The subscription is disabled; enable it (PATCH enabled=true) first.",
                       code="webhook_disabled")
    if not await store.rearm(deps.db, delivery_id, now=deps.clock()):
        raise Conflict("The delivery is being attempted right now; try again in a minute.",
                       code="delivery_in_progress")
    deps.part(wakeup)()
    again = await store.get_delivery(deps.db, delivery_id)
    assert again is not None
    return (await _page(deps, [again], None)).items[0]
