"""Agent invocation bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from agent_service.kit.schemas import Body

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


class InvokeAsyncRequest(InvokeRequest):
    stream: bool = False
    priority: Annotated[Priority, msgspec.Meta(description="Under a backlog: high before normal before low.")] = (
        "normal"
    )
    run_at: Annotated[datetime, msgspec.Meta(description="RFC 3339 time to run at, at most 7 days ahead.")] | None = (
        None
    )
    delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_SCHEDULE_SECONDS)] | None = None


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
