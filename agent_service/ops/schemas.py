"""Ops bodies: health, and the admin view of the job system (what Flower showed for the Celery design)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from agent_service.tasks.schemas import TaskSummary


class QueueDepth(msgspec.Struct, kw_only=True):
    queued: int
    deferred: int
    in_progress: int
    retrying: int


class WorkerInfo(msgspec.Struct, kw_only=True):
    worker_id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    running: int
    jobs_started: int
    jobs_succeeded: int
    jobs_failed: int
    jobs_retried: int
    jobs_cancelled: int
    jobs_deferred: int = 0
    jobs_orphaned: int = 0


class MinuteStat(msgspec.Struct, kw_only=True):
    minute: datetime
    completed: int
    failed: int
    cancelled: int


class JobsOverview(msgspec.Struct, kw_only=True):
    queue: QueueDepth
    workers: list[WorkerInfo]
    throughput: list[MinuteStat]
    recent_failures: list[TaskSummary]
    window_minutes: int


class HealthComponent(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    detail: str | None = None


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "unavailable"]
    components: dict[str, HealthComponent] = msgspec.field(default_factory=dict)
