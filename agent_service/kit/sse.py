"""The one Server-Sent Events encoder: every stream of the API (an agent's answer, a task's live
events) is written through here, with one error shape.

An event's SSE name is its Struct's tag (`chunk`, `state`, …) and its `data` is the Struct as
JSON (tag included), so a client can dispatch on either. After the 200 is sent an error can
only be an event: `event: error` with `{type, code, detail, status}`, then the stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from agent_service.errors import AppError

_json = msgspec.json.Encoder()
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keep-alive\n\n"


class StreamError(msgspec.Struct, kw_only=True, tag="error", tag_field="type"):
    """The last event of a stream that failed after it started."""

    code: str
    detail: str
    status: int = 500


def encode(event: msgspec.Struct, *, event_id: str | None = None) -> bytes:
    tag = type(event).__struct_config__.tag
    head = f"event: {tag}\n" if isinstance(tag, str) else ""
    if event_id:
        head += f"id: {event_id}\n"
    return head.encode() + b"data: " + _json.encode(event) + b"\n\n"


def error_event(exc: AppError) -> bytes:
    return encode(StreamError(code=exc.code, detail=exc.detail, status=exc.status))


class Item(msgspec.Struct, frozen=True):
    """One thing to send: an event with an optional id, or (event None) a keep-alive comment."""

    event: msgspec.Struct | None
    event_id: str | None = None


async def _body(items: AsyncIterator[Item], retry_ms: int | None) -> AsyncIterator[bytes]:
    # Starlette cancels this generator when the client disconnects; the source's own cleanup
    # (closing an agent's stream, a Redis read) runs then.
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n".encode()
    try:
        async for item in items:
            yield KEEPALIVE if item.event is None else encode(item.event, event_id=item.event_id)
    except AppError as exc:
        yield error_event(exc)


class _EventResponse(StreamingResponse):
    """Closes its items however the response ends (sent, client gone, send failed): a source that
    holds something (a task follower's stream slot) gives it back even if it never started."""

    def __init__(self, items: AsyncIterator[Item], retry_ms: int | None) -> None:
        super().__init__(_body(items, retry_ms), media_type="text/event-stream", headers=HEADERS)
        self._items = items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for source in (self.body_iterator, self._items):
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()


def response(items: AsyncIterator[Item], *, retry_ms: int | None = None) -> StreamingResponse:
    return _EventResponse(items, retry_ms)
