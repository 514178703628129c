"""AG-UI (protocol 1.0) as our run endpoint speaks it: the RunAgentInput it reads and the events
it sends (camelCase, each with its `type`), after ag-ui's schema. Input keeps the fields we do
not use (AG-UI inputs are open); events carry only what we fill in."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class InputMessage(msgspec.Struct, rename="camel", kw_only=True):
    """One message of the conversation so far: its `content` a string or a list of content parts
    (`{"type": "text", "text": …}`)."""

    role: Annotated[str, msgspec.Meta(max_length=32, examples=["user"])]
    content: str | list[dict[str, Any]] | None = None
    id: Id | None = None


class RunAgentInput(msgspec.Struct, rename="camel", kw_only=True):
    thread_id: Id
    run_id: Id
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1, max_length=1000)]
    state: Any = None
    tools: list[dict[str, Any]] | None = None
    context: list[dict[str, Any]] | None = None
    forwarded_props: dict[str, Any] | None = None
    parent_run_id: Id | None = None
    protocol_version: Annotated[str, msgspec.Meta(max_length=16)] | None = None


class _Event(msgspec.Struct, rename="camel", omit_defaults=True, kw_only=True, tag_field="type"):
    """Base of AG-UI events: the SSE event name and the `type` in the data are the event's type.
    (No `timestamp`: AG-UI leaves it optional, and its unit unstated.)"""


class RunStarted(_Event, tag="RUN_STARTED"):
    thread_id: str
    run_id: str
    protocol_version: str  # ours (AG-UI's version negotiation: each side declares itself)


class TextMessageStart(_Event, tag="TEXT_MESSAGE_START"):
    message_id: str
    role: Literal["assistant"]


class TextMessageContent(_Event, tag="TEXT_MESSAGE_CONTENT"):
    message_id: str
    delta: str


class TextMessageEnd(_Event, tag="TEXT_MESSAGE_END"):
    message_id: str


class RunFinished(_Event, tag="RUN_FINISHED"):
    thread_id: str
    run_id: str
    result: dict[str, Any] | None = None


class RunError(_Event, tag="RUN_ERROR"):
    message: str
    code: str | None = None


EVENTS = (RunStarted, TextMessageStart, TextMessageContent, TextMessageEnd, RunFinished, RunError)
