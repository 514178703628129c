"""Background task bodies: acceptance, status and the kept result."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from agent_service.kit.schemas import PageQuery

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


class JobResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What an agent job returns; kept in Redis for JOB_RESULT_TTL."""

    content: str
    metadata: dict[str, Any]
    agent_id: str
    session_id: str | None
    started_at: datetime
    completed_at: datetime
    chunks: list[str] | None = None
    incomplete: bool = False


# An agent task's result is a JobResult; a maintenance task's is that job's own return value.
# msgspec cannot express a union of two object types, so the schema is given by hand (the spec
# builder always publishes JobResult among the components).
TaskResult = Annotated[
    Any,
    msgspec.Meta(
        description="The job's result once SUCCESS (or the partial output of a cancelled stream).",
        extra_json_schema={"anyOf": [{"$ref": "#/components/schemas/JobResult"},
                                     {"type": "object", "additionalProperties": True}, {"type": "null"}]},
    ),
]


class TaskStatus(msgspec.Struct, kw_only=True):
    task_id: str
    state: TaskState
    status: TaskStatusWord
    progress: int
    result: TaskResult
    error: str | None
    agent_id: str | None = None
    kind: str | None = None
    tries: int = 0
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
