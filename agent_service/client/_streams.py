"""What the sync and async clients share about streams, with no I/O: decoding an agent's answer
stream, following a task's events across connections (resume with Last-Event-ID, when to give up
on the stream and poll instead), and turning a finished status into a result or a typed error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

import msgspec

from agent_service.client import _routes as routes
from agent_service.client._errors import (
    AgentServiceError,
    ApiError,
    ConnectionFailed,
    RateLimited,
    ResultExpired,
    ServerError,
    StreamFailed,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    stream_error,
)
from agent_service.client._models import (
    TASK_EVENTS,
    AgentResult,
    ReconnectEvent,
    StateEvent,
    StreamChunk,
    StreamDone,
    TaskEvent,
    TaskStatus,
)
from agent_service.client._sse import KEEPALIVE, Decoder, Message

MAX_STREAM_FAILURES = 3  # connections in a row that broke before an event: then poll instead
_any = msgspec.json.Decoder()


def _message_data(msg: Message) -> object:
    try:
        return _any.decode(msg.data)
    except msgspec.DecodeError:
        return None


def stream_event(decoder: Decoder, line: str) -> StreamChunk | StreamDone | None:
    """One line of POST /agents/{id}/stream: a chunk, the done event, or nothing yet; an `error`
    event raises StreamFailed."""
    msg = decoder.feed(line)
    if msg is None or msg is KEEPALIVE:
        return None
    if msg.event == "chunk":
        return msgspec.json.decode(msg.data, type=StreamChunk)
    if msg.event == "done":
        return msgspec.json.decode(msg.data, type=StreamDone)
    if msg.event == "error":
        raise stream_error(_message_data(msg))
    return None  # an event a newer server added


class Unfollowable(AgentServiceError):
    """The task's event stream cannot be used now (refused, or broke repeatedly); `cause` is why."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Follow:
    """One task's events across as many connections as it takes. Resuming after the last event id
    replays exactly what came later, so nothing is missed or seen twice."""

    def __init__(self, task_id: str, *, max_failures: int = MAX_STREAM_FAILURES) -> None:
        self.task_id = task_id
        self.last_event_id: str | None = None
        self.end: StateEvent | None = None
        self.connections = 0
        self._failures = 0
        self._max_failures = max_failures
        self._resume_asked = False
        self._decoder = Decoder()

    def call(self) -> routes.Call:
        self.connections += 1
        self._decoder = Decoder()
        return routes.events(self.task_id, self.last_event_id)

    def feed(self, line: str) -> TaskEvent | None:
        msg = self._decoder.feed(line)
        if msg is None or msg is KEEPALIVE:
            return None
        if self._decoder.last_event_id is not None:
            self.last_event_id = self._decoder.last_event_id
        if msg.event == "error":
            raise stream_error(_message_data(msg))
        kind = TASK_EVENTS.get(msg.event)
        if kind is None:
            return None  # an event a newer server added
        event = msgspec.json.decode(msg.data, type=kind)
        if isinstance(event, ReconnectEvent):
            # the server ended this follow early (lifetime, or it let us go): resume where it says
            self.last_event_id = event.last_event_id or self.last_event_id
            self._resume_asked = True
            return None
        event.event_id = msg.id
        self._failures = 0
        if isinstance(event, StateEvent) and event.finished:
            self.end = event
        return event

    def ended(self, error: Exception | None) -> Literal["done", "reconnect"]:
        """The connection ended (cleanly, or with `error`). Raise Unfollowable when it is time to
        poll instead: the stream was refused (429 too many streams) or broke too often."""
        if self.end is not None:
            return "done"
        if isinstance(error, RateLimited):
            raise Unfollowable(error)
        if isinstance(error, ApiError) and not isinstance(error, ServerError | StreamFailed):
            raise error  # 401, 404, 422…: polling would meet the same answer
        if self._resume_asked and error is None:
            self._resume_asked = False
            return "reconnect"
        self._failures += 1
        if self._failures >= self._max_failures:
            raise Unfollowable(error or ConnectionFailed("The event stream ended before its task."))
        return "reconnect"

    def pause(self) -> float:
        """Seconds to wait before the next connection: none after one break, then a little more."""
        return 0.0 if self._failures <= 1 else min(2.0, 0.25 * 2 ** (self._failures - 2))


def poll_delays(initial: float = 0.2, factor: float = 1.5, cap: float = 2.0) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(cap, delay * factor)


class Deadline:
    def __init__(self, task_id: str, timeout: float | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self._at is None else self._at - time.monotonic()

    def cap(self, seconds: float) -> float:
        left = self.left()
        return seconds if left is None else max(0.05, min(seconds, left))

    def check(self, status: TaskStatus | None = None) -> None:
        left = self.left()
        if left is not None and left <= 0:
            raise TaskTimeout(self.task_id, f"Task {self.task_id} did not finish within {self.timeout} s.", status)


def outcome(status: TaskStatus) -> AgentResult:
    """A finished task's result, or the typed error of how it ended."""
    if status.state == "FAILURE":
        code = f" ({status.error_code})" if status.error_code else ""
        raise TaskFailed(status.task_id, f"Task {status.task_id} failed{code}: {status.error}", status)
    if status.state == "REVOKED":
        raise TaskCancelled(status.task_id, f"Task {status.task_id} was cancelled.", status)
    result = status.agent_result()
    if result is None:
        raise ResultExpired(status.task_id, f"Task {status.task_id} ended {status.state} but its result is not "
                            "available (expired, or not an agent's result: see status().result).", status)
    return result
