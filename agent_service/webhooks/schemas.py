"""Webhook bodies: subscriptions (create, update, the record shown to its owner, the secret shown
once), deliveries with their attempts, and the message every receiver gets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec

from agent_service.agents.schemas import TaskEventType
from agent_service.kit.schemas import Body, PageQuery

EventType = Literal["task.succeeded", "task.failed", "task.cancelled", "task.retrying", "batch.completed"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
TASK_EVENTS: tuple[str, ...] = get_args(TaskEventType)
BATCH_COMPLETED = "batch.completed"
DeliveryState = Literal["pending", "succeeded", "failed"]

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description=(
    "The receiver: an http(s) URL on the public Internet (checked now and at every delivery; redirects "
    "are not followed)."))]
Events = Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES), description=(
    "The events to send (default: all of them)."))]
Description = Annotated[str, msgspec.Meta(max_length=500)]


class SubscriptionCreate(Body):
    url: Url
    events: Events | None = None
    description: Description = ""


class SubscriptionUpdate(Body):
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: Annotated[bool, msgspec.Meta(description=(
        "false pauses the subscription; true enables it again (also after it was disabled for failing)."))
    ] | None = None


class Subscription(msgspec.Struct, kw_only=True):
    id: str
    url: str
    events: list[str]
    description: str
    task_id: str | None  # set: only that task's events
    enabled: bool
    disabled_reason: str | None  # why it was disabled (by its owner, or for failing a day)
    disabled_at: datetime | None
    failing_since: datetime | None  # every delivery since then has failed
    secret_hint: str  # the start of the signing secret, to tell secrets apart
    created_at: datetime
    updated_at: datetime


class SubscriptionCreated(Subscription, kw_only=True):
    secret: str  # whsec_…: shown once, here


class SecretRotated(msgspec.Struct, kw_only=True):
    id: str
    secret: str  # the new signing secret, shown once
    secret_hint: str
    previous_secret_expires_at: datetime  # until then deliveries carry a signature by each secret


class SubscriptionPage(msgspec.Struct, kw_only=True):
    items: list[Subscription]
    next_cursor: str | None


class SubscriptionQuery(PageQuery):
    """`GET /webhooks`: page size and the opaque `next_cursor` of the previous page."""


class DeliveryQuery(PageQuery):
    state: DeliveryState | None = None


class Attempt(msgspec.Struct, kw_only=True):
    attempt: int
    started_at: datetime
    status_code: int | None  # None: no HTTP answer (refused, timed out, connection failed)
    latency_ms: int | None
    error: str | None
    response: str | None  # the start of the receiver's answer


class Delivery(msgspec.Struct, kw_only=True):
    id: str  # the `webhook-id` of every attempt: receivers dedupe on it
    event: str
    subscription_id: str | None  # None: the task's own `webhook`
    task_id: str | None
    url: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None
    history: list[Attempt]  # oldest first


class DeliveryPage(msgspec.Struct, kw_only=True):
    items: list[Delivery]
    next_cursor: str | None


class WebhookMessage(msgspec.Struct, kw_only=True):
    """The body of every delivery: what happened, when, and the resource as its API shows it
    (for task events: the task's status as GET /agents/tasks/{id}/status returns it)."""

    type: str
    timestamp: datetime
    data: dict[str, Any]


class DispatchPass(msgspec.Struct, kw_only=True):
    """What one delivery pass did (the arq job's result, for its log line)."""

    events: int = 0
    attempts: int = 0
    succeeded: int = 0


# --- records (repository.py) ---------------------------------------------------------------


class AttemptRecord(msgspec.Struct, kw_only=True):
    delivery_id: str
    attempt: int
    started_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response: str | None


class OutboxRow(msgspec.Struct, kw_only=True):
    id: int
    task_id: str
    owner_id: str | None
    event: str
    created_at: datetime


class Outcome(msgspec.Struct, kw_only=True):
    """How an attempt ended, and what follows for its delivery (pending: retried at next_attempt_at)."""

    attempt: AttemptRecord
    state: str
    step: int
    next_attempt_at: datetime | None
    now: datetime
