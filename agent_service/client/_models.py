"""What the client returns, as msgspec Structs of its own.

The server's schema modules are not reused: they import its web framework and logging (through
`kit.sse`), which a client must not need. These mirror the server's JSON and are tolerant in the
ways a newer server may differ: unknown fields are ignored, states and codes are plain strings
(a new state decodes), and a task's `result` stays a dict until asked for as an `AgentResult`
(a maintenance task's result has another shape, and a new result type must not break decoding).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

FINISHED_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class _Model(msgspec.Struct, kw_only=True):
    """Base: keyword-only; unknown fields are ignored (msgspec's default, stated here on purpose)."""


class AgentInfo(_Model):
    id: str
    description: str = ""
    available: bool = True
    streaming: bool = False


class AgentList(_Model):
    agents: list[AgentInfo]
    default_agent: str | None = None


class InvokeResult(_Model):
    """A synchronous invocation's answer."""

    response: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class StreamChunk(_Model):
    """One piece of a streamed answer; `str(chunk)` is its text."""

    index: int
    content: str

    def __str__(self) -> str:
        return self.content


class StreamDone(_Model):
    chunks: int = 0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class TaskAccepted(_Model):
    task_id: str
    status: str
    message: str = ""
    status_url: str = ""
    priority: str = "normal"
    scheduled_for: datetime | None = None


class AgentResult(_Model):
    """An agent task's result: the answer, and for a streaming task its chunks (of the last
    attempt). `incomplete` marks output cut short by a time limit or a cancel."""

    content: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    agent_id: str | None = None
    session_id: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    chunks: list[str] | None = None
    incomplete: bool = False


class TaskStatus(_Model):
    task_id: str
    state: str  # PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED
    status: str  # queued, processing, retrying, completed, failed, cancelled
    progress: int = 0
    result: dict[str, Any] | None = None  # tagged by `type`: "agent", or a maintenance job's name
    error: str | None = None
    error_code: str | None = None
    agent_id: str | None = None
    kind: str | None = None
    tries: int = 0
    retries: int = 0
    worker_losses: int = 0
    live: bool = True  # False while the server cannot read Redis: progress and result unknown
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    next_retry_at: datetime | None = None
    scheduled_for: datetime | None = None
    priority: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def agent_result(self) -> AgentResult | None:
        """The result as an agent's answer, or None (no result yet, expired, or not an agent's)."""
        if self.result is None or self.result.get("type", "agent") != "agent":
            return None
        return msgspec.convert(self.result, AgentResult)


class TaskSummary(_Model):
    task_id: str
    state: str
    status: str
    agent_id: str | None = None
    kind: str | None = None
    owner_id: str | None = None
    tries: int = 0
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    scheduled_for: datetime | None = None
    progress: int = 0


class TaskPage(_Model):
    items: list[TaskSummary]
    next_cursor: str | None = None


class TokenPair(_Model):
    access_token: str
    refresh_token: str | None = None
    token_type: str = "bearer"
    expires_in: int | None = None


# --- a task's live events (GET /agents/tasks/{id}/events) ------------------------------------
# `event_id` is the SSE id the event came with (None for a closing event without one): the
# resume point. Every event carries the `attempt` it belongs to: chunks of a higher attempt are a
# new answer from index 0, so discard what was gathered from the earlier one.


class StateEvent(_Model):
    state: str
    progress: int = 0
    attempt: int = 0
    error: str | None = None
    retry_at: datetime | None = None
    retried_by_admin: bool = False
    final: bool = False
    event_id: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


class ProgressEvent(_Model):
    progress: int
    attempt: int = 0
    event_id: str | None = None


class ChunkEvent(_Model):
    index: int
    content: str
    attempt: int = 0
    progress: int = 0
    event_id: str | None = None


class ReconnectEvent(_Model):
    """The server ended a follow before its task (lifetime reached, or let go): resume."""

    last_event_id: str | None = None
    reason: str = ""


TaskEvent = StateEvent | ProgressEvent | ChunkEvent

TASK_EVENTS: dict[str, type[StateEvent | ProgressEvent | ChunkEvent | ReconnectEvent]] = {
    "state": StateEvent, "progress": ProgressEvent, "chunk": ChunkEvent, "reconnect": ReconnectEvent,
}
