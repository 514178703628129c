"""Batch bodies: the request (many invoke-async bodies at once), its answer, and a batch's status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agent_service.agents.schemas import InvokeAsyncRequest
from agent_service.kit.schemas import Body, PageQuery

BatchState = Literal["running", "completed", "cancelled"]


class BatchWebhook(Body):
    """Where to POST `batch.completed` once every task of the batch has finished, signed (Standard
    Webhooks) and retried like any delivery."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description=(
        "An http(s) URL on the public Internet (checked now and at every delivery)."))]


class BatchRequest(Body):
    items: Annotated[list[InvokeAsyncRequest], msgspec.Meta(min_length=1, description=(
        "The invocations, each an invoke-async body (at most BATCH_MAX_ITEMS). All are checked before any "
        "is queued: one bad item refuses the whole batch, naming it (`$.items[3].metadata`)."))]
    webhook: BatchWebhook | None = None


class BatchAccepted(msgspec.Struct, kw_only=True):
    batch_id: str
    task_ids: list[str]  # in the order of `items`
    status_url: str
    webhook_secret: str | None = None  # the batch webhook's signing secret (whsec_…), shown once


class BatchCounts(msgspec.Struct, kw_only=True):
    """How many of the batch's tasks are in each state."""

    PENDING: int = 0
    STARTED: int = 0
    RETRY: int = 0
    SUCCESS: int = 0
    FAILURE: int = 0
    REVOKED: int = 0


class BatchStatus(msgspec.Struct, kw_only=True):
    batch_id: str
    agent_id: str
    state: BatchState  # completed: every task finished; cancelled: a cancel was asked for
    size: int
    finished: int  # tasks in SUCCESS, FAILURE or REVOKED
    progress: int  # 0-100 over all tasks (a finished one counts 100, a running one its own progress)
    counts: BatchCounts
    created_at: datetime
    cancelled_at: datetime | None
    completed_at: datetime | None


class BatchPage(msgspec.Struct, kw_only=True):
    items: list[BatchStatus]
    next_cursor: str | None


class BatchQuery(PageQuery):
    """`GET /batches`: my batches, newest first; page size and the opaque `next_cursor`."""
