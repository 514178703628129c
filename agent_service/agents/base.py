"""The Agent protocol and the errors an agent may raise.

An agent turns an AgentInput into an AgentOutput (`invoke`) or into text chunks (`stream`).
Errors say whether trying again could help: the job layer retries only transient ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str


class AgentInput(msgspec.Struct, kw_only=True):
    message: str
    session_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    history: list[ChatMessage] = msgspec.field(default_factory=list)
    attempt: int = 1  # 1 for the first try of a job; lets demo agents fail "the first N times"


class AgentOutput(msgspec.Struct, kw_only=True):
    content: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class StreamMeta(msgspec.Struct, kw_only=True):
    """Optionally yielded last by `stream()`: metadata known only at the end (usage, model)."""

    metadata: dict[str, Any]


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
    """The input (usually its metadata) is not acceptable to this agent."""


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
