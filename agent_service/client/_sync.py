"""The synchronous client: `AgentServiceClient`, its `TaskHandle` and `ChunkStream`."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from agent_service.client import _routes as routes
from agent_service.client._errors import ApiError, ConnectionFailed
from agent_service.client._models import (
    AgentList,
    AgentResult,
    InvokeResult,
    StreamChunk,
    StreamDone,
    TaskAccepted,
    TaskEvent,
    TaskStatus,
    TaskSummary,
    TokenPair,
)
from agent_service.client._routes import DEFAULT_TIMEOUT, RetryPolicy
from agent_service.client._sse import Decoder
from agent_service.client._streams import Deadline, Follow, Unfollowable, outcome, poll_delays, stream_event
from agent_service.client._wire import Wire


class AgentServiceClient:
    """A client of the agent-service HTTP API.

    `api_key` is sent as `X-API-Key`, `token` (a JWT) as `Authorization: Bearer`; give one, or
    neither and call `login`. `retries` applies to idempotent calls only (GETs, and `submit`,
    which always carries an Idempotency-Key): a 429/503 whose Retry-After is at most
    `max_retry_wait` seconds, or a broken connection. `transport` is handed to httpx (tests, proxies).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None,
                 retries: int = 2, max_retry_wait: float = 30.0) -> None:
        self._wire = Wire(base_url, timeout=timeout, transport=transport,
                          retry=RetryPolicy(retries=retries, max_wait=max_retry_wait))
        self._wire.credentials = routes.credentials(api_key, token)
        self.timeout = timeout

    def __enter__(self) -> AgentServiceClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._wire.close()

    def _do(self, spec: tuple[routes.Call, type[Any]]) -> Any:
        call, kind = spec
        return routes.decode(self._wire.send(call), kind)

    def login(self, email: str, password: str) -> TokenPair:
        """Sign in; later calls carry the access token (instead of any API key given)."""
        pair: TokenPair = self._do(routes.token(email, password))
        self._wire.credentials = routes.credentials(None, pair.access_token)
        return pair

    def agents(self) -> AgentList:
        result: AgentList = self._do(routes.agents())
        return result

    def invoke(self, message: str, *, agent: str | None = None, session_id: str | None = None,
               metadata: dict[str, Any] | None = None) -> InvokeResult:
        """Run the agent (the server's default when `agent` is None) and wait for its answer."""
        result: InvokeResult = self._do(routes.invoke(message, agent, session_id, metadata))
        return result

    def stream(self, message: str, *, agent: str | None = None, session_id: str | None = None,
               metadata: dict[str, Any] | None = None) -> ChunkStream:
        """The answer as it is produced: iterate the returned stream for `StreamChunk`s."""
        return ChunkStream(self._wire, routes.stream(message, agent, session_id, metadata))

    def submit(self, message: str, *, agent: str | None = None, session_id: str | None = None,
               metadata: dict[str, Any] | None = None, stream: bool = False, priority: str = "normal",
               run_at: datetime | None = None, delay_seconds: float | None = None,
               idempotency_key: str | None = None) -> TaskHandle:
        """Queue the invocation as a background task. Retried safely: the call always carries an
        Idempotency-Key (yours, or a fresh one), so the server answers a repeat, never queues twice."""
        accepted: TaskAccepted = self._do(routes.submit(
            message, agent=agent, session_id=session_id, metadata=metadata, stream=stream, priority=priority,
            run_at=run_at, delay_seconds=delay_seconds, idempotency_key=idempotency_key))
        return TaskHandle(self, accepted.task_id, accepted)

    def task(self, task_id: str) -> TaskHandle:
        """A handle on an existing task (no request is made)."""
        return TaskHandle(self, task_id)

    def get_task(self, task_id: str) -> TaskStatus:
        status: TaskStatus = self._do(routes.task(task_id))
        return status

    def cancel_task(self, task_id: str) -> TaskStatus:
        status: TaskStatus = self._do(routes.cancel(task_id))
        return status

    def list_tasks(self, *, state: str | None = None, agent: str | None = None,
                   limit: int = 20) -> Iterator[TaskSummary]:
        """My tasks, newest first, fetched `limit` (1-100) per page, following `next_cursor`."""
        cursor: str | None = None
        while True:
            page = self._do(routes.tasks(state, agent, limit, cursor))
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def _follow(self, follow: Follow, deadline: Deadline | None) -> Iterator[TaskEvent]:
        """The task's events until its end. Unfollowable when the stream cannot be used."""
        while True:
            if deadline is not None:
                deadline.check()
            error: Exception | None = None
            read = self.timeout if deadline is None else deadline.cap(self.timeout)
            try:
                with self._wire.open_stream(follow.call(), read_timeout=read) as lines:
                    for line in lines:
                        event = follow.feed(line)
                        if event is not None:
                            yield event
                        if follow.end is not None:
                            return
                        if deadline is not None:
                            deadline.check()
            except (ApiError, ConnectionFailed) as exc:  # Follow.ended sorts them: resume, poll or raise
                error = exc
            if follow.ended(error) == "done":
                return
            time.sleep(follow.pause())


class TaskHandle:
    """A background task: its status, live events, result and cancel."""

    def __init__(self, client: AgentServiceClient, task_id: str, accepted: TaskAccepted | None = None) -> None:
        self._client = client
        self.id = task_id
        self.accepted = accepted

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    def status(self) -> TaskStatus:
        return self._client.get_task(self.id)

    def cancel(self) -> TaskStatus:
        """REVOKED at once if queued; a running task answers with its state and stops within a second."""
        return self._client.cancel_task(self.id)

    def events(self) -> Iterator[TaskEvent]:
        """State, progress and chunk events until the task ends, resumed across dropped connections.
        A chunk of a higher `attempt` starts a new answer: discard the text gathered before it."""
        try:
            yield from self._client._follow(Follow(self.id), None)
        except Unfollowable as exc:
            raise exc.cause from None

    def wait_status(self, timeout: float | None = None, *,
                    on_event: Callable[[TaskEvent], None] | None = None) -> TaskStatus:
        """The finished task's status, following its events (each given to `on_event`); when the
        stream is refused or keeps breaking, polling the status with backoff instead."""
        deadline = Deadline(self.id, timeout)
        try:
            for event in self._client._follow(Follow(self.id), deadline):
                if on_event is not None:
                    on_event(event)
        except Unfollowable:
            pass
        else:
            return self.status()
        delays = poll_delays()
        while True:
            status = self.status()
            if status.finished:
                return status
            deadline.check(status)
            time.sleep(deadline.cap(next(delays)))
            deadline.check(status)

    def wait(self, timeout: float | None = None, *,
             on_event: Callable[[TaskEvent], None] | None = None) -> AgentResult:
        """The task's result once it succeeds. Raises TaskFailed, TaskCancelled (with the partial
        output), or TaskTimeout (a TimeoutError) when `timeout` seconds pass first."""
        return outcome(self.wait_status(timeout, on_event=on_event))


class ChunkStream:
    """An agent's streamed answer: iterate for `StreamChunk`s (opened on first use). After the end,
    `done` holds the final event's metadata and `text` the whole answer. Use as a context manager
    (or exhaust it) so that leaving early closes the connection, which stops the agent."""

    def __init__(self, wire: Wire, call: routes.Call) -> None:
        self._wire = wire
        self._call = call
        self._iter: Generator[StreamChunk, None, None] | None = None
        self.chunks: list[StreamChunk] = []
        self.done: StreamDone | None = None

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamChunk]:
        if self._iter is None:
            self._iter = self._read()
        return self._iter

    @property
    def text(self) -> str:
        return "".join(chunk.content for chunk in self.chunks)

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()

    def _read(self) -> Generator[StreamChunk, None, None]:
        decoder = Decoder()
        with self._wire.open_stream(self._call) as lines:
            for line in lines:
                event = stream_event(decoder, line)
                if isinstance(event, StreamChunk):
                    self.chunks.append(event)
                    yield event
                elif isinstance(event, StreamDone):
                    self.done = event
                    return
        raise ConnectionFailed("The stream ended before its `done` event.")
