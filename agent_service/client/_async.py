"""The asyncio client: `AsyncAgentServiceClient`, its `AsyncTaskHandle` and `AsyncChunkStream`,
the twins of _sync.py (the shared logic is in _routes.py and _streams.py)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from agent_service.client import _routes as routes
from agent_service.client._errors import ApiError, ConnectionFailed, TaskTimeout
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
from agent_service.client._streams import Follow, Unfollowable, outcome, poll_delays, stream_event
from agent_service.client._wire import AsyncWire


class AsyncAgentServiceClient:
    """The asyncio twin of `AgentServiceClient` (same arguments, same methods, awaited)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None,
                 retries: int = 2, max_retry_wait: float = 30.0) -> None:
        self._wire = AsyncWire(base_url, timeout=timeout, transport=transport,
                               retry=RetryPolicy(retries=retries, max_wait=max_retry_wait))
        self._wire.credentials = routes.credentials(api_key, token)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncAgentServiceClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._wire.close()

    async def _do(self, spec: tuple[routes.Call, type[Any]]) -> Any:
        call, kind = spec
        return routes.decode(await self._wire.send(call), kind)

    async def login(self, email: str, password: str) -> TokenPair:
        """Sign in; later calls carry the access token (instead of any API key given)."""
        pair: TokenPair = await self._do(routes.token(email, password))
        self._wire.credentials = routes.credentials(None, pair.access_token)
        return pair

    async def agents(self) -> AgentList:
        result: AgentList = await self._do(routes.agents())
        return result

    async def invoke(self, message: str, *, agent: str | None = None, session_id: str | None = None,
                     metadata: dict[str, Any] | None = None) -> InvokeResult:
        result: InvokeResult = await self._do(routes.invoke(message, agent, session_id, metadata))
        return result

    def stream(self, message: str, *, agent: str | None = None, session_id: str | None = None,
               metadata: dict[str, Any] | None = None) -> AsyncChunkStream:
        """`async for chunk in client.stream(...)`: the answer as it is produced."""
        return AsyncChunkStream(self._wire, routes.stream(message, agent, session_id, metadata))

    async def submit(self, message: str, *, agent: str | None = None, session_id: str | None = None,
                     metadata: dict[str, Any] | None = None, stream: bool = False, priority: str = "normal",
                     run_at: datetime | None = None, delay_seconds: float | None = None,
                     idempotency_key: str | None = None) -> AsyncTaskHandle:
        accepted: TaskAccepted = await self._do(routes.submit(
            message, agent=agent, session_id=session_id, metadata=metadata, stream=stream, priority=priority,
            run_at=run_at, delay_seconds=delay_seconds, idempotency_key=idempotency_key))
        return AsyncTaskHandle(self, accepted.task_id, accepted)

    def task(self, task_id: str) -> AsyncTaskHandle:
        return AsyncTaskHandle(self, task_id)

    async def get_task(self, task_id: str) -> TaskStatus:
        status: TaskStatus = await self._do(routes.task(task_id))
        return status

    async def cancel_task(self, task_id: str) -> TaskStatus:
        status: TaskStatus = await self._do(routes.cancel(task_id))
        return status

    async def list_tasks(self, *, state: str | None = None, agent: str | None = None,
                         limit: int = 20) -> AsyncIterator[TaskSummary]:
        cursor: str | None = None
        while True:
            page = await self._do(routes.tasks(state, agent, limit, cursor))
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def _follow(self, follow: Follow) -> AsyncGenerator[TaskEvent, None]:
        while True:
            error: Exception | None = None
            try:
                async with self._wire.open_stream(follow.call()) as lines:
                    async for line in lines:
                        event = follow.feed(line)
                        if event is not None:
                            yield event
                        if follow.end is not None:
                            return
            except (ApiError, ConnectionFailed) as exc:  # Follow.ended sorts them: resume, poll or raise
                error = exc
            if follow.ended(error) == "done":
                return
            await asyncio.sleep(follow.pause())


class AsyncTaskHandle:
    def __init__(self, client: AsyncAgentServiceClient, task_id: str, accepted: TaskAccepted | None = None) -> None:
        self._client = client
        self.id = task_id
        self.accepted = accepted

    def __repr__(self) -> str:
        return f"AsyncTaskHandle({self.id!r})"

    async def status(self) -> TaskStatus:
        return await self._client.get_task(self.id)

    async def cancel(self) -> TaskStatus:
        return await self._client.cancel_task(self.id)

    async def events(self) -> AsyncIterator[TaskEvent]:
        """As `TaskHandle.events`; close it (contextlib.aclosing) when leaving early."""
        follow = self._client._follow(Follow(self.id))
        try:
            async for event in follow:
                yield event
        except Unfollowable as exc:
            raise exc.cause from None
        finally:
            await follow.aclose()

    # `timeout` as in the sync twin (and Celery's `get(timeout=…)`): the bound is asyncio.timeout inside
    async def wait_status(self, timeout: float | None = None, *,  # noqa: ASYNC109
                          on_event: Callable[[TaskEvent], Any] | None = None) -> TaskStatus:
        """As `TaskHandle.wait_status`; `on_event` may be a coroutine function."""
        bound = asyncio.timeout(timeout)
        last: list[TaskStatus] = []
        try:
            async with bound:
                return await self._wait(on_event, last)
        except TimeoutError:
            if not bound.expired():
                raise
            raise TaskTimeout(self.id, f"Task {self.id} did not finish within {timeout} s.",
                              last[-1] if last else None) from None

    async def _wait(self, on_event: Callable[[TaskEvent], Any] | None, last: list[TaskStatus]) -> TaskStatus:
        follow = self._client._follow(Follow(self.id))
        try:
            async for event in follow:
                if on_event is not None and inspect.isawaitable(done := on_event(event)):
                    await done
        except Unfollowable:
            pass
        else:
            return await self.status()
        finally:
            await follow.aclose()
        delays = poll_delays()
        while True:
            status = await self.status()
            last.append(status)
            if status.finished:
                return status
            await asyncio.sleep(next(delays))

    async def wait(self, timeout: float | None = None, *,  # noqa: ASYNC109
                   on_event: Callable[[TaskEvent], Any] | None = None) -> AgentResult:
        return outcome(await self.wait_status(timeout, on_event=on_event))


class AsyncChunkStream:
    """As `ChunkStream`, for `async for` and `async with`."""

    def __init__(self, wire: AsyncWire, call: routes.Call) -> None:
        self._wire = wire
        self._call = call
        self._iter: AsyncGenerator[StreamChunk, None] | None = None
        self.chunks: list[StreamChunk] = []
        self.done: StreamDone | None = None

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncGenerator[StreamChunk, None]:
        if self._iter is None:
            self._iter = self._read()
        return self._iter

    @property
    def text(self) -> str:
        return "".join(chunk.content for chunk in self.chunks)

    async def aclose(self) -> None:
        if self._iter is not None:
            await self._iter.aclose()

    async def _read(self) -> AsyncGenerator[StreamChunk, None]:
        decoder = Decoder()
        async with self._wire.open_stream(self._call) as lines:
            async for line in lines:
                event = stream_event(decoder, line)
                if isinstance(event, StreamChunk):
                    self.chunks.append(event)
                    yield event
                elif isinstance(event, StreamDone):
                    self.done = event
                    return
        raise ConnectionFailed("The stream ended before its `done` event.")
