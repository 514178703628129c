"""Agents' types: the Agent protocol an agent implements, the input it receives, what it returns
or streams, the errors it may raise (transient or permanent), and the invocation bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import msgspec

from agent_service.kit.schemas import Body
from agent_service.sessions.schemas import ChatMessage


class AgentInput(msgspec.Struct, kw_only=True):
    message: str
    session_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    history: list[ChatMessage] = msgspec.field(default_factory=list)
    attempt: int = 1  # 1 for the first try of a job; lets demo agents fail "the first N times"


class AgentOutput(msgspec.Struct, kw_only=True):
    content: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)  # with `usage` and `model`: see Usage


class Usage(msgspec.Struct, kw_only=True):
    """What one run used, as its agent reports it: `metadata["usage"]` of its output (or of the
    last StreamMeta), the model under `metadata["model"]`. Recorded and counted against budgets
    (agent_service/usage); an agent that reports nothing used nothing."""

    input_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0


USAGE_KEY = "usage"


def usage_metadata(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


class StreamMeta(msgspec.Struct, kw_only=True):
    """Optionally yielded by `stream()`: first to announce how many chunks to expect (so progress
    can be exact), last with metadata known only at the end (usage, model)."""

    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    expected_chunks: int | None = None


StreamItem = str | StreamMeta


class AgentError(Exception):
    """Base of agent failures. The message is safe to show to the caller."""


class TransientAgentError(AgentError):
    """May succeed if tried again later (provider 5xx/429, timeout, connection error)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentAgentError(AgentError):
    """Will fail the same way again: do not retry."""


class InvalidAgentInput(PermanentAgentError):
    """The input (usually its metadata) is not acceptable to this agent; `path` names the field."""

    def __init__(self, message: str, *, path: str = "$.metadata") -> None:
        super().__init__(message)
        self.path = path


class AgentUnavailable(AgentError):
    """The agent exists but is not configured or cannot serve now."""


@runtime_checkable
class Agent(Protocol):
    name: str
    description: str

    @property
    def available(self) -> bool: ...

    async def invoke(self, data: AgentInput) -> AgentOutput: ...

    def stream(self, data: AgentInput) -> AsyncIterator[StreamItem]: ...


def validate_input(agent: Agent, data: AgentInput) -> None:
    """Agents may define `validate(input)` (raising InvalidAgentInput) so that bad input is refused
    before a job is queued; it is optional in the protocol."""
    check = getattr(agent, "validate", None)
    if callable(check):
        check(data)


# --- invocation bodies ---------------------------------------------------------------------

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


class InvokeRequest(Body):
    message: Message
    session_id: SessionId | None = None
    metadata: dict[str, Any] | None = None


Priority = Literal["high", "normal", "low"]
MAX_SCHEDULE_SECONDS = 7 * 24 * 3600
# the webhook events of a task (the webhooks domain adds batch.completed for its subscriptions)
TaskEventType = Literal["task.succeeded", "task.failed", "task.cancelled", "task.retrying"]


class TaskWebhook(Body):
    """Where to POST this task's events, signed (Standard Webhooks) and retried like a subscription's."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description=(
        "An http(s) URL on the public Internet (checked now and at every delivery)."))]
    events: Annotated[list[TaskEventType], msgspec.Meta(min_length=1, max_length=4, description=(
        "Which events to send; default: the finishing ones (succeeded, failed, cancelled)."))] | None = None


class StoredTaskWebhook(msgspec.Struct, kw_only=True):
    """A task's webhook as its record keeps it (`tasks.webhook`), with the secret that signs it."""

    url: str
    events: list[str]
    secret: str


class InvokeAsyncRequest(InvokeRequest):
    stream: bool = False
    priority: Annotated[Priority, msgspec.Meta(description="Under a backlog: high before normal before low.")] = (
        "normal"
    )
    run_at: Annotated[datetime, msgspec.Meta(description="RFC 3339 time to run at, at most 7 days ahead.")] | None = (
        None
    )
    delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_SCHEDULE_SECONDS)] | None = None
    webhook: TaskWebhook | None = None


class InvokeResponse(msgspec.Struct, kw_only=True):
    response: str
    metadata: dict[str, Any]


class AgentInfo(msgspec.Struct, kw_only=True):
    id: str
    description: str
    available: bool
    streaming: bool
    # when unavailable: what the operator must configure (a retry cannot help until then)
    unavailable_reason: str | None = None
    missing_settings: list[str] = msgspec.field(default_factory=list)


def missing_settings(agent: Agent) -> tuple[str, ...]:
    """Settings an unavailable agent needs (agents may declare `missing_settings`; optional)."""
    found = getattr(agent, "missing_settings", ())
    return tuple(str(s) for s in found) if isinstance(found, tuple | list) else ()


def unavailable_reason(agent: Agent) -> str:
    needed = missing_settings(agent)
    if needed:
        return (f"Agent {agent.name!r} is not configured on this server: set {' and '.join(needed)} for the web and "
                "worker processes and restart them. Retrying will not help until then.")
    return f"Agent {agent.name!r} is not available on this server (its configuration is incomplete)."


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[AgentInfo]
    default_agent: str


# --- the events of POST /agents/{agent_id}/stream (Server-Sent Events) -------------------


class StreamChunk(msgspec.Struct, kw_only=True, tag="chunk", tag_field="type"):
    index: int
    content: str


class StreamDone(msgspec.Struct, kw_only=True, tag="done", tag_field="type"):
    chunks: int
    metadata: dict[str, Any]
