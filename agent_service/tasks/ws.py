"""One authenticated WebSocket connection following many tasks (`GET /api/v1/ws`; the handshake,
auth and the connection's stream slot are tasks/ws_endpoints.py's).

Each subscription is a task of its own that reads the same items as an SSE follower
(`follow.follow_items`: the history, then the process's one Redis reader, tasks/hub.py) and sends
them as `event` messages: N subscriptions cost N registrations with the hub, not N connections.
Frames go out one at a time (a lock), so a slow client slows every subscription alike; the hub
lets go of a follower that falls MAX_INBOX events behind, and the connection then ends with
`reconnect` (the client resumes each task from its last id).

Bounds: MAX_SUBSCRIPTIONS open subscriptions per connection, each `subscribe` charged to the
caller's rate limit like a request, and the connection's lifetime (STREAM_MAX_SECONDS: then a
`reconnect` message naming every open subscription's last id, and close code 4000). A bad
message is answered with an `error` and the connection goes on; nothing a client sends ends it
with an internal error.

Seam for more kinds of subscription (a batch's tasks): a subscription is a key (`task:<id>`) and a
source of (task id, item) pairs; a new kind is one more message field, key prefix and source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller
from agent_service.kit.io import too_deep
from agent_service.kit.schemas import FieldError
from agent_service.kit.sse import Item
from agent_service.kit.ws import CLOSE_RECONNECT, MAX_MESSAGE_BYTES, Socket, SocketGone
from agent_service.logging import get_logger
from agent_service.tasks import follow
from agent_service.tasks.service import get_record
from agent_service.tasks.ws_messages import (
    Auth,
    ClientMessage,
    Error,
    Event,
    Ping,
    Pong,
    Ready,
    Reconnect,
    ServerMessage,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

log = get_logger(__name__)

MAX_SUBSCRIPTIONS = 100
Source = AsyncGenerator[tuple[str, Item], None]  # (task id, item) in order, ending when the subscription is done
_decode = msgspec.json.Decoder(ClientMessage).decode
_encode = msgspec.json.Encoder().encode


def parse(frame: str | bytes) -> ClientMessage | Error:
    """A client frame as a message, or the error to answer it with."""
    if isinstance(frame, bytes):
        return Error(code="malformed_message", detail="Send JSON objects as text frames.", status=400)
    raw = frame.encode()
    if len(raw) > MAX_MESSAGE_BYTES:
        return Error(code="message_too_large", detail=f"A message may be at most {MAX_MESSAGE_BYTES} bytes.",
                     status=413)
    if too_deep(raw):
        return Error(code="json_too_deep", detail="The message nests too deep.", status=400)
    try:
        return _decode(raw)
    except msgspec.ValidationError as exc:  # msgspec names the field and the rule, nothing internal
        return Error(code="invalid_message", detail=str(exc), status=422)
    except msgspec.DecodeError:
        return Error(code="malformed_message", detail="The message is not valid JSON.", status=400)


def encode(message: ServerMessage) -> str:
    return _encode(message).decode()


def error_of(exc: AppError, task_id: str | None = None) -> Error:
    retry = exc.headers.get("Retry-After")
    return Error(code=exc.code, detail=exc.detail, status=exc.status, task_id=task_id,
                 retry_after=int(retry) if retry and retry.isdigit() else None,
                 errors=[FieldError(path=e["path"], message=e["message"]) for e in exc.errors])


@dataclass
class _Subscription:
    task_id: str
    last_id: str | None
    runner: asyncio.Task[None] | None = field(default=None)


class Connection:
    def __init__(self, deps: Deps, socket: Socket, caller: Caller, *, deadline: float,
                 charge: Callable[[], Awaitable[None]]) -> None:
        self._deps, self._socket, self._caller = deps, socket, caller
        self._deadline = deadline  # loop time
        self._charge = charge  # the caller's rate limit, once per subscribe
        self._subs: dict[str, _Subscription] = {}
        self._lock = asyncio.Lock()
        self._ending: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def run(self) -> tuple[int, str] | None:
        """Serve until the client leaves (None) or the server ends it (the close code and reason)."""
        loop = asyncio.get_running_loop()
        receiving: asyncio.Task[str | bytes | None] | None = None
        try:
            await self.send(Ready(user_id=self._caller.user_id, max_subscriptions=MAX_SUBSCRIPTIONS,
                                  expires_in=max(0, round(self._deadline - loop.time()))))
            while True:
                left = self._deadline - loop.time()
                if left <= 0:
                    return await self._reconnect("max_lifetime")
                receiving = receiving or asyncio.ensure_future(self._socket.receive())
                await asyncio.wait((receiving, self._ending), timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if self._ending.done():
                    reason = self._ending.result()
                    return None if reason is None else await self._reconnect("dropped")
                if receiving.done():
                    frame, receiving = receiving.result(), None
                    if frame is None:
                        return None
                    await self._handle(parse(frame))
        except SocketGone:
            return None
        finally:
            if receiving is not None:
                receiving.cancel()
            await self._stop_all()

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    async def send(self, message: ServerMessage) -> None:
        data = encode(message)
        async with self._lock:
            await self._socket.send(data)

    # --- messages -------------------------------------------------------------------------------

    async def _handle(self, message: ClientMessage | Error) -> None:
        if isinstance(message, Error):
            await self.send(message)
        elif isinstance(message, Subscribe):
            await self._subscribe(message)
        elif isinstance(message, Unsubscribe):
            await self._unsubscribe(message.task_id)
        elif isinstance(message, Ping):
            await self.send(Pong())
        elif isinstance(message, Auth):
            await self.send(Error(code="already_authenticated", detail="This connection is authenticated.",
                                  status=409))

    async def _subscribe(self, message: Subscribe) -> None:
        key, task_id = f"task:{message.task_id}", message.task_id
        if key in self._subs:
            await self.send(Error(code="already_subscribed", detail="This task is followed already; unsubscribe "
                                  "first to follow it from another event id.", status=409, task_id=task_id))
            return
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            await self.send(Error(code="too_many_subscriptions", status=429, task_id=task_id,
                                  detail=f"A connection follows at most {MAX_SUBSCRIPTIONS} tasks at once."))
            return
        after = message.last_event_id
        if after is not None and not follow.valid_event_id(after):
            await self.send(Error(code="invalid_message", detail="last_event_id is not an event id.", status=422,
                                  task_id=task_id))
            return
        try:
            await self._charge()
            record = await get_record(self._deps, task_id, owner_id=self._caller.user_id,
                                      is_admin=self._caller.is_admin)
        except AppError as exc:  # someone else's task is not found, as over HTTP
            await self.send(error_of(exc, task_id))
            return
        await self.send(Subscribed(task_id=task_id, state=record.state))  # type: ignore[arg-type]
        sub = self._subs[key] = _Subscription(task_id, after)
        items = follow.follow_items(self._deps, task_id, after=after or "0", state=record.state,
                                    deadline=self._deadline + 60)  # the connection's own end comes first
        sub.runner = asyncio.create_task(self._pump(key, sub, _of_task(task_id, items)),
                                         name=f"ws-{task_id}")

    async def _unsubscribe(self, task_id: str) -> None:
        sub = self._subs.pop(f"task:{task_id}", None)
        if sub is not None and sub.runner is not None:
            sub.runner.cancel()
            await asyncio.gather(sub.runner, return_exceptions=True)
        # idempotent: not (or no longer) followed is unsubscribed too
        await self.send(Unsubscribed(task_id=task_id, reason="requested", last_event_id=sub.last_id if sub else None))

    # --- subscriptions --------------------------------------------------------------------------

    async def _pump(self, key: str, sub: _Subscription, source: Source) -> None:
        try:
            async with contextlib.aclosing(source):
                async for task_id, item in source:
                    if isinstance(item.event, follow.ReconnectEvent):  # the hub let it go
                        self._end("dropped")
                        return
                    await self.send(Event(task_id=task_id, id=item.event_id, event=item.event))  # type: ignore[arg-type]
                    sub.last_id = item.event_id or sub.last_id
            self._subs.pop(key, None)
            await self.send(Unsubscribed(task_id=sub.task_id, reason="finished", last_event_id=sub.last_id))
        except SocketGone:
            self._end(None)
        except AppError as exc:  # Redis went away mid-follow: this subscription ends, resumable
            self._subs.pop(key, None)
            await self._send_quietly(error_of(exc, sub.task_id),
                                     Unsubscribed(task_id=sub.task_id, reason="failed", last_event_id=sub.last_id))
        except Exception:  # broad: a bug in one subscription must not take the connection or others down
            log.exception("ws.subscription_failed", task_id=sub.task_id)
            self._subs.pop(key, None)
            await self._send_quietly(
                Error(code="internal_error", detail="Following this task failed.", status=500, task_id=sub.task_id),
                Unsubscribed(task_id=sub.task_id, reason="failed", last_event_id=sub.last_id))

    async def _send_quietly(self, *messages: ServerMessage) -> None:
        try:
            for message in messages:
                await self.send(message)
        except SocketGone:
            self._end(None)

    def _end(self, reason: str | None) -> None:
        if not self._ending.done():
            self._ending.set_result(reason)

    async def _stop_all(self) -> None:
        runners = [s.runner for s in self._subs.values() if s.runner is not None]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    async def _reconnect(self, reason: str) -> tuple[int, str]:
        """Stop every subscription (nothing is sent after this message), say where each got to, close."""
        await self._stop_all()
        await self.send(Reconnect(reason="dropped" if reason == "dropped" else "max_lifetime",
                                  last_event_ids={s.task_id: s.last_id for s in self._subs.values()}))
        return CLOSE_RECONNECT, f"{reason}: reconnect and resubscribe with your last event ids"


async def _of_task(task_id: str, items: AsyncGenerator[Item, None]) -> Source:
    """A task's follower items as (task id, item), keep-alives dropped (WebSocket pings keep the line)."""
    async with contextlib.aclosing(items):
        async for item in items:
            if item.event is not None:
                yield task_id, item
