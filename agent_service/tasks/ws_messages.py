"""The messages of `GET /api/v1/ws`: JSON text frames, each an object whose `type` names it.

Client → server: `auth` (first, when the upgrade carried no credential header), `subscribe`,
`unsubscribe`, `ping`. Server → client: `ready`, `subscribed`, `event` (a task's live event, the
same typed event as the SSE stream's `data`, with the same id), `unsubscribed`, `error`,
`reconnect` (just before the server closes the socket), `pong`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agent_service.kit.schemas import FieldError
from agent_service.tasks.schemas import TaskEvent, TaskState

TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
EventId = Annotated[str, msgspec.Meta(pattern=r"^\d{1,20}-\d{1,20}$")]


class _In(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    pass


class Auth(_In, tag="auth"):
    """A JWT or an API key, for a client that could not send a header (a browser)."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class Subscribe(_In, tag="subscribe"):
    """Follow a task: its history after `last_event_id` (all of it without), then live events."""

    task_id: TaskId
    last_event_id: EventId | None = None


class Unsubscribe(_In, tag="unsubscribe"):
    task_id: TaskId


class Ping(_In, tag="ping"):
    """For clients that cannot send WebSocket pings (browsers): answered with `pong`."""


ClientMessage = Auth | Subscribe | Unsubscribe | Ping


class _Out(msgspec.Struct, kw_only=True, tag_field="type"):
    pass


class Ready(_Out, tag="ready"):
    """Authenticated: subscribe now. The server ends the connection after `expires_in` seconds."""

    user_id: str
    max_subscriptions: int
    expires_in: int


class Subscribed(_Out, tag="subscribed"):
    task_id: str
    state: TaskState


class Event(_Out, tag="event"):
    """One of the task's events; `id` is its SSE id (resume after it), null on a closing state event
    sent when the task's history had expired."""

    task_id: str
    id: str | None
    event: TaskEvent


class Unsubscribed(_Out, tag="unsubscribed"):
    """No more events of this task: it ended (`finished`, after its last event), was unsubscribed
    (`requested`), or its stream failed (`failed`, after an `error`; subscribe again to resume)."""

    task_id: str
    reason: Literal["finished", "requested", "failed"]
    last_event_id: str | None


class Error(_Out, tag="error", omit_defaults=True):
    """What went wrong with a message or a subscription (`status` as HTTP would answer it); the
    connection stays open unless a close follows."""

    code: str
    detail: str
    status: int
    task_id: str | None = None
    retry_after: int | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)


class Reconnect(_Out, tag="reconnect"):
    """The server is about to close (code 4000): connect again and subscribe to each task with its
    `last_event_id` (here: the last id sent on each open subscription) to miss nothing."""

    reason: Literal["max_lifetime", "dropped"]
    last_event_ids: dict[str, str | None]


class Pong(_Out, tag="pong"):
    pass


ServerMessage = Ready | Subscribed | Event | Unsubscribed | Error | Reconnect | Pong
