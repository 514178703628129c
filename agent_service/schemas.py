"""Every request and response body. One Struct drives validation, encoding and the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Message = Annotated[
    str, msgspec.Meta(min_length=1, max_length=10_000, description="The user's message to the agent.")
]
SessionId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="Conversation session id (letters, digits, `._:-`).",
    ),
]
AgentId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]
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


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body: unknown fields are a 422, not silently dropped."""


class InvokeRequest(Body):
    message: Message
    session_id: SessionId | None = None
    metadata: dict[str, Any] | None = msgspec.field(default=None)


class InvokeAsyncRequest(InvokeRequest):
    stream: bool = False


class InvokeResponse(msgspec.Struct, kw_only=True):
    response: str
    metadata: dict[str, Any]


class AgentInfo(msgspec.Struct, kw_only=True):
    id: str
    description: str
    available: bool
    streaming: bool


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[AgentInfo]
    default_agent: str


class TaskAccepted(msgspec.Struct, kw_only=True):
    task_id: str
    status: TaskStatusWord
    message: str
    status_url: str


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


class TaskStatus(msgspec.Struct, kw_only=True):
    task_id: str
    state: TaskState
    status: TaskStatusWord
    progress: int
    result: JobResult | dict[str, Any] | None
    error: str | None
    agent_id: str | None = None
    kind: str | None = None
    tries: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_retry_at: datetime | None = None


class FieldError(msgspec.Struct, kw_only=True):
    path: str
    message: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    code: str | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)


class HealthComponent(msgspec.Struct, kw_only=True, omit_defaults=True):
    ok: bool
    detail: str | None = None


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "unavailable"]
    components: dict[str, HealthComponent] = msgspec.field(default_factory=dict)
