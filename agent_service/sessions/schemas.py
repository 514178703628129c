"""Conversation session bodies: the stored messages, list summaries and the full session."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from agent_service.kit.schemas import PageQuery

# the longest `session_id` an invocation accepts (schemas.agents.SessionId)
MAX_SESSION_ID_LENGTH = 128
MAX_TITLE_LENGTH = 80


class ChatMessage(msgspec.Struct, kw_only=True):
    """One turn of a conversation, as an agent receives its history."""

    role: Literal["system", "user", "assistant"]
    content: str


class SessionMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: str
    created_at: datetime


class SessionSummary(msgspec.Struct, kw_only=True):
    id: str
    agent_id: str
    title: str
    message_count: int
    created_at: datetime
    updated_at: datetime
    last_activity: datetime
    expires_at: datetime


class SessionDetail(SessionSummary, kw_only=True):
    messages: list[SessionMessage] = msgspec.field(default_factory=list)


class SessionPage(msgspec.Struct, kw_only=True):
    items: list[SessionSummary]
    next_cursor: str | None


class SessionQuery(PageQuery):
    """`GET /sessions`: page size and the opaque `next_cursor` of the previous page."""


class SessionsCleanup(msgspec.Struct, kw_only=True, tag="cleanup_expired_sessions", tag_field="type"):
    """The result of `cleanup_expired_sessions`."""

    deleted_count: int
    cutoff_time: datetime
    status: Literal["success"]
    started_at: datetime
    completed_at: datetime
