"""Background tasks' types: acceptance, status and result, list pages, the live events a follower
receives, and the job payload on the queue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from agent_service.audit.schemas import AuditArchive
from agent_service.identity.schemas import BlacklistCleanup
from agent_service.kit.schemas import PageQuery, Query
from agent_service.kit.sse import StreamError
from agent_service.kit.tempfiles import TempFilesCleanup
from agent_service.sessions.schemas import SessionsCleanup

TaskState = Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]
TaskStatusWord = Literal["queued", "processing", "retrying", "completed", "failed", "cancelled"]

STATUS_WORDS: dict[str, TaskStatusWord] = {
    "PENDING": "queued",
    "STARTED": "processing",
    "RETRY": "retrying",
    "SUCCESS": "completed",
    "FAILURE": "failed",
    "REVOKED": "cancelled",
}
FINISHED_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class TaskAccepted(msgspec.Struct, kw_only=True):
    task_id: str
    status: TaskStatusWord
    message: str
    status_url: str
    priority: str = "normal"
    scheduled_for: datetime | None = None
    webhook_secret: str | None = None  # with a `webhook`: its signing secret (whsec_…), shown only here


class JobResult(msgspec.Struct, kw_only=True, omit_defaults=True, tag="agent", tag_field="type"):
    """What an agent task produced; kept in Redis for JOB_RESULT_TTL. `chunks` (streaming tasks)
    are read back from the task's event stream, where each chunk is stored once."""

    content: str
    metadata: dict[str, Any]
    agent_id: str
    session_id: str | None
    started_at: datetime
    completed_at: datetime
    chunks: list[str] | None = None
    incomplete: bool = False


MaintenanceResult = SessionsCleanup | AuditArchive | BlacklistCleanup | TempFilesCleanup
# An agent task's result, or a maintenance task's; tagged by `type`
TaskResult = JobResult | MaintenanceResult


class TaskStatus(msgspec.Struct, kw_only=True):
    task_id: str
    state: TaskState
    status: TaskStatusWord
    progress: int
    result: TaskResult | None
    error: str | None
    error_code: str | None = None  # worker_lost, job_lost, … (a FAILURE's stable reason)
    agent_id: str | None = None
    kind: str | None = None
    tries: int = 0  # runs so far
    retries: int = 0  # transient failures retried (at most JOB_MAX_RETRIES)
    worker_losses: int = 0  # runs whose worker died (at most JOB_MAX_WORKER_LOSSES)
    # False while Redis cannot be read: state and times come from SQL, progress/result are unknown
    live: bool = True
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_retry_at: datetime | None = None
    scheduled_for: datetime | None = None
    priority: str | None = None


class TaskQuery(PageQuery):
    state: TaskState | None = None
    agent: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    owner: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class EventsQuery(msgspec.Struct, kw_only=True):
    """The events route's query: for EventSource, which can send no headers."""

    token: Annotated[str, msgspec.Meta(
        max_length=4096, pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
        description="A stream token (POST …/stream-token) instead of a credential header.")] | None = None
    last_event_id: Annotated[str, msgspec.Meta(
        pattern=r"^\d{1,20}-\d{1,20}$",
        description="Resume after this event id, as the Last-Event-ID header does (the header wins).")] | None = None


class TaskSummary(msgspec.Struct, kw_only=True):
    task_id: str
    state: TaskState
    status: TaskStatusWord
    agent_id: str | None
    kind: str
    owner_id: str | None
    tries: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    scheduled_for: datetime | None = None
    progress: int = 0


class TaskPage(msgspec.Struct, kw_only=True):
    items: list[TaskSummary]
    next_cursor: str | None


class AgentJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    task_id: str
    agent_id: str
    message: str
    session_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    owner_id: str | None = None
    request_id: str | None = None
    stream: bool = False
    # the owner's tier at submission: their cap on running jobs (None: queued before tiers were
    # recorded; the default tier's cap)
    tier: str | None = None
    # W3C traceparent of the enqueue span (kit/tracing.py): the run joins the request's trace
    # (None: tracing off, or queued before it was carried)
    traceparent: str | None = None
    api_key_id: str | None = None  # the key that submitted it (usage is reported per key)


# --- live events (GET /agents/tasks/{id}/events and the dashboard) ---------------------------
# Every event carries the `attempt` it belongs to: a re-run (retry, or a lost worker's job run
# again) starts a new attempt, and its chunks are a new answer, not the continuation of the old.


class StateEvent(msgspec.Struct, kw_only=True, omit_defaults=True, tag="state", tag_field="type"):
    state: TaskState
    progress: int
    attempt: int = 0
    error: str | None = None
    retry_at: datetime | None = None
    retried_by_admin: bool = False
    final: bool = False  # a closing event sent when the stream's history had expired


class ProgressEvent(msgspec.Struct, kw_only=True, tag="progress", tag_field="type"):
    progress: int
    attempt: int


class ChunkEvent(msgspec.Struct, kw_only=True, tag="chunk", tag_field="type"):
    index: int
    content: str
    attempt: int
    progress: int


TaskEvent = StateEvent | ProgressEvent | ChunkEvent | StreamError


class MaintenanceRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The last run of a maintenance job."""

    result: MaintenanceResult
    ran_at: datetime
    duration: float
    trigger: Literal["cron", "manual"]
    slot: str | None = None
    task_id: str | None = None


class MaintenanceInfo(msgspec.Struct, kw_only=True):
    name: str
    schedule: str  # cron, UTC
    last: MaintenanceRun | None


class MaintenanceList(msgspec.Struct, kw_only=True):
    jobs: list[MaintenanceInfo]


# --- export (GET /agents/tasks/export) ---------------------------------------------------------

ExportFormat = Literal["jsonl", "csv"]
ExportTime = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339 with an offset


class ExportQuery(Query):
    """The export's filters; they combine with AND. `since` is inclusive and `until` exclusive, both
    on `created_at`."""

    format: Annotated[ExportFormat, msgspec.Meta(
        description="`jsonl` (one JSON `TaskExportRow` per line) or `csv` (the same columns).")] = "jsonl"
    state: Annotated[TaskState | None, msgspec.Meta(description="Only tasks in this state.")] = None
    agent_id: Annotated[Annotated[str, msgspec.Meta(max_length=64)] | None, msgspec.Meta(
        description="Only tasks of this agent.")] = None
    since: Annotated[ExportTime | None, msgspec.Meta(description="Tasks created at or after this time.")] = None
    until: Annotated[ExportTime | None, msgspec.Meta(description="Tasks created before this time.")] = None
    owner: Annotated[Annotated[str, msgspec.Meta(max_length=64)] | None, msgspec.Meta(
        description="Admins: only this user's tasks (without it, everyone's).")] = None


class TaskExportRow(msgspec.Struct, kw_only=True):
    """One task of an export: its durable record, its input and its result while Redis keeps it
    (JOB_RESULT_TTL; null after, or for a task without one). `result.chunks` are left out: `content`
    holds the whole answer."""

    task_id: str
    owner_id: str | None
    agent_id: str | None
    kind: str
    state: TaskState
    status: TaskStatusWord
    priority: str | None
    tries: int
    retries: int
    worker_losses: int
    error: str | None
    error_code: str | None
    session_id: str | None
    request_id: str | None
    message: str | None  # the invocation's input (agent tasks)
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    scheduled_for: datetime | None
    result: TaskResult | None
