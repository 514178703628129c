"""Conversation sessions: the history an invocation passes to its agent, and the sessions API.

A session is keyed by (owner, id): the id is the client's choice, so the same id from two users
names two independent sessions. Every read and write names the owner, so someone else's
session is never reachable: for you it simply does not exist (404, no existence oracle).
A session expires SESSION_EXPIRY_HOURS after its last activity; an expired one counts as gone,
and using its id again starts a fresh conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from agent_service.clock import Clock, utcnow
from agent_service.config import Settings
from agent_service.errors import NotFound
from agent_service.kit.db import Database
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger
from agent_service.sessions import repository as session_store
from agent_service.sessions.schemas import (
    MAX_SESSION_ID_LENGTH,
    MAX_TITLE_LENGTH,
    ChatMessage,
    SessionDetail,
    SessionMessage,
    SessionPage,
    SessionQuery,
)

log = get_logger(__name__)


def make_title(message: str) -> str:
    """The first user message on one line, cut to MAX_TITLE_LENGTH characters."""
    text = " ".join(message.split())
    if len(text) <= MAX_TITLE_LENGTH:
        return text
    return text[: MAX_TITLE_LENGTH - 1].rstrip() + "…"


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"No session with id {session_id[:MAX_SESSION_ID_LENGTH]!r}.", code="session_not_found")


@dataclass
class SessionService:
    db: Database
    settings: Settings
    clock: Clock = utcnow

    @classmethod
    def from_deps(cls, deps: Deps) -> SessionService:
        return cls(db=deps.db, settings=deps.settings, clock=deps.clock)

    def _expiry(self, now: datetime) -> datetime:
        return now + timedelta(hours=self.settings.session_expiry_hours)

    async def check_usable(self, owner_id: str, session_id: str) -> None:
        """Kept for the invocation paths that call it before running or queueing anything: every id
        is usable, as the caller's own session (ids are per owner, so another user's use of the
        same string neither blocks nor reveals anything)."""

    async def history_for(self, owner_id: str | None, session_id: str, agent_id: str) -> list[ChatMessage]:
        """The prior messages to give the agent (oldest first, at most SESSION_MAX_MESSAGES).

        Creates the session on first use (or restarts an expired one) and marks it active, so
        it cannot expire while the agent is still answering."""
        if owner_id is None:
            # every caller is authenticated; an ownerless job must not share one global session
            log.warning("session.no_owner", session_id=session_id)
            return []
        now = self.clock()
        session = await session_store.open_session(
            self.db, owner_id=owner_id, session_id=session_id, agent_id=agent_id, now=now,
            expires_at=self._expiry(now),
        )
        kept = session.messages[-self.settings.session_max_messages:]
        return [ChatMessage(role=m.role, content=m.content) for m in kept]

    async def record_exchange(
        self, owner_id: str | None, session_id: str, agent_id: str, user_message: str, reply: str
    ) -> SessionDetail | None:
        """Append the user's message and the agent's reply (one transaction: both or neither)."""
        if owner_id is None:
            log.warning("session.no_owner", session_id=session_id)
            return None
        now = self.clock()
        return await session_store.append(
            self.db,
            owner_id=owner_id,
            session_id=session_id,
            agent_id=agent_id,
            messages=[
                SessionMessage(role="user", content=user_message, created_at=now),
                SessionMessage(role="assistant", content=reply, created_at=now),
            ],
            title=make_title(user_message),
            now=now,
            expires_at=self._expiry(now),
            max_messages=self.settings.session_max_messages,
        )

    async def list_sessions(self, owner_id: str, query: SessionQuery | None = None) -> SessionPage:
        query = query or SessionQuery()
        return await session_store.list_page(
            self.db, owner_id, now=self.clock(), limit=query.limit, cursor=query.cursor
        )

    async def get_session(self, owner_id: str, session_id: str) -> SessionDetail:
        """The caller's live session with its messages; missing, expired or not theirs → NotFound."""
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise _not_found(session_id)
        session = await session_store.get(self.db, owner_id, session_id)
        if session is None or session.expires_at <= self.clock():
            raise _not_found(session_id)
        return session

    async def delete_session(self, owner_id: str, session_id: str) -> None:
        """Missing, expired or not the caller's → NotFound (an expired row is left to the cleanup job)."""
        if len(session_id) > MAX_SESSION_ID_LENGTH:
            raise _not_found(session_id)
        if not await session_store.delete(self.db, owner_id, session_id, live_at=self.clock()):
            raise _not_found(session_id)
