"""Live followers of task events (`GET /agents/tasks/{id}/events`) at scale: one Redis reader per
web process for all of them, at most STREAM_MAX_PER_USER per user across web processes and
STREAM_MAX_PER_PROCESS per process (429 `too_many_streams`), a maximum lifetime that ends with a
resumable `reconnect` event, and Redis restarted under open followers.

The hub's own tests drive a FollowerHub in process on the session's valkey: a follower that joins
behind the reader's cursor, a new key while the reader is blocked, a slow follower, closing. The
rest run real uvicorn processes (and a worker where a task must run) on the session's valkey, or
on a stack of the test's own when Redis is restarted. SQL plays no part in what is tested: SQLite
only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import psutil
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from agent_service.cli.embedded import free_port
from agent_service.tasks import hub as hub_module
from agent_service.tasks.follower import Follower
from agent_service.tasks.hub import FollowerHub
from agent_service.tasks.live import TaskLive
from agent_service.tasks.schemas import ChunkEvent
from tests.support.environment import ROOT
from tests.support.faults import Stack
from tests.support.processes import Process, bootstrap_user
from tests.support.waiting import wait_for, wait_http_ok

pytestmark = pytest.mark.sqlite_only
e2e = pytest.mark.e2e

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


# --- an SSE client ----------------------------------------------------------------------------


@dataclass
class Event:
    name: str
    id: str | None
    data: dict[str, Any]


async def sse_events(resp: httpx.Response) -> AsyncIterator[Event]:
    name, eid, data = "message", None, []
    async for line in resp.aiter_lines():
        if line == "":
            if data:
                yield Event(name, eid, json.loads("\n".join(data)))
            name, eid, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "id":
            eid = value
        elif key == "data":
            data.append(value)


@dataclass
class Followed:
    """What one client saw following a task to its end, reconnecting as a client should."""

    events: list[Event] = field(default_factory=list)
    reconnects: list[Event] = field(default_factory=list)  # the `reconnect` events that ended a stream
    retries: int = 0  # connections that failed or ended without a reconnect event (error, 503, outage)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events if e.id]

    @property
    def last_id(self) -> str | None:
        ids = self.ids
        return ids[-1] if ids else None


async def follow(http: httpx.AsyncClient, url: str, headers: dict[str, str], seen: Followed | None = None, *,
                 last_id: str | None = None, timeout: float = 40.0) -> Followed:
    """Follow `url` until the task's closing state event. A `reconnect` event is answered at once
    with its Last-Event-ID; an error event, a 503 or a broken connection after a short pause."""
    seen = seen or Followed()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent_id = seen.last_id or last_id
        hdrs = {**headers, **({"Last-Event-ID": sent_id} if sent_id else {})}
        told = False  # ended by a reconnect event: come back at once
        try:
            async with http.stream("GET", url, headers=hdrs) as resp:
                if resp.status_code != 503:
                    assert resp.status_code == 200, (await resp.aread()).decode()
                    async for ev in sse_events(resp):
                        if ev.name == "reconnect":
                            # no id of its own; it names the last id this client has
                            assert ev.id is None and ev.data["last_event_id"] == (seen.last_id or last_id), ev
                            seen.reconnects.append(ev)
                            told = True
                            break
                        if ev.name == "error":
                            break
                        seen.events.append(ev)
                        if ev.name == "state" and ev.data["state"] in FINISHED:
                            return seen
        except httpx.TransportError:
            pass
        if not told:
            seen.retries += 1  # a 503, an error event, a broken or closed connection: resume shortly
            await asyncio.sleep(0.2)
    raise AssertionError(f"never reached the task's end within {timeout}s: {[e.name for e in seen.events]}")


def stream_ids(redis_url: str, key: str) -> list[str]:
    """Every id on the task's event stream, read straight from Redis: what a follower must see."""
    with sync_redis.Redis.from_url(redis_url) as r:
        return [eid.decode() for eid, _ in r.xrange(key)]


def redis_connections(pid: int, redis_url: str) -> int:
    """TCP connections from process `pid` to the Redis server."""
    port = urlsplit(redis_url).port
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# --- the service --------------------------------------------------------------------------------


@dataclass
class Web:
    base: str
    process: Process

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def events_url(self, task_id: str) -> str:
        return f"{self.base}/api/v1/agents/tasks/{task_id}/events"


@dataclass
class Service:
    env: dict[str, str]
    prefix: str
    start_web: Callable[[], Web]
    start_worker: Callable[[], Process]
    user: Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def service(env: dict[str, str], spawn: Callable[..., Process]) -> Callable[..., Service]:
    """Web and worker processes on the test's valkey and SQLite file, with `settings` on top."""

    def make(**settings: str) -> Service:
        prefix = f"t-{uuid.uuid4().hex[:10]}:"
        full = {**env, "REDIS_KEY_PREFIX": prefix, **settings}

        def start_web() -> Web:
            port = free_port()
            proc = spawn("web", full, PORT=str(port))
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(f"{base}/health/live", on_fail=lambda: proc.output()[-3000:])
            return Web(base, proc)

        async def user(name: str | None = None, *, admin: bool = False) -> dict[str, str]:
            email = f"{name or uuid.uuid4().hex[:8]}@example.com"
            # bootstrap_user runs its own event loop: not on the test's
            return {"X-API-Key": await asyncio.to_thread(bootstrap_user, full, email, admin=admin)}

        return Service(full, prefix, start_web, lambda: spawn("worker", full), user)

    return make


def submit(web: Web, headers: dict[str, str], body: dict[str, Any]) -> str:
    resp = httpx.post(f"{web.base}/api/v1/agents/echo/invoke-async", json=body, headers=headers, timeout=10)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def later(web: Web, headers: dict[str, str]) -> str:
    """A task scheduled an hour ahead: its stream stays open (PENDING) for as long as a test needs."""
    return submit(web, headers, {"message": "later", "delay_seconds": 3600})


class Streams:
    """Event streams held open (each on its own connection) until closed or the test ends."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._open: list[contextlib.AsyncExitStack] = []

    async def open(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """GET `url`; a 200 is held open once its first event arrived, anything else is read and closed."""
        stack = contextlib.AsyncExitStack()
        resp = await stack.enter_async_context(self.http.stream("GET", url, headers=headers))
        if resp.status_code != 200:
            await resp.aread()
            await stack.aclose()
            return resp
        self._open.append(stack)
        events = sse_events(resp)
        # kept: a reader dropped half-way is finalized, and that closes its connection
        stack.push_async_callback(events.aclose)
        await anext(events)  # the PENDING state: the follower is up
        return resp

    async def close_one(self) -> None:
        await self._open.pop(0).aclose()

    async def aclose(self) -> None:
        for stack in self._open:
            await stack.aclose()
        self._open.clear()


@pytest.fixture
async def streams() -> AsyncIterator[Streams]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30),
                                 limits=httpx.Limits(max_connections=200, max_keepalive_connections=0)) as http:
        s = Streams(http)
        try:
            yield s
        finally:
            await s.aclose()


def assert_too_many(resp: httpx.Response, *, bound: str) -> None:
    assert resp.status_code == 429, f"{resp.status_code}: the stream was served"
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == "too_many_streams" and bound in body["detail"], body
    assert int(resp.headers["retry-after"]) >= 1


async def opens_again(streams: Streams, url: str, headers: dict[str, str]) -> None:
    """A closed stream's slot comes back (once the server has seen the client go)."""

    async def try_open() -> bool:
        resp = await streams.open(url, headers)
        assert resp.status_code in (200, 429), resp.text
        return resp.status_code == 200

    await wait_for(try_open, timeout=10, interval=0.05)


# --- (a) one reader for many followers ------------------------------------------------------------


@e2e
async def test_thirty_followers_of_one_task_share_one_redis_reader(service: Callable[..., Service]) -> None:
    svc = service(STREAM_MAX_PER_USER="100")
    web = svc.start_web()
    headers = await svc.user()
    task_id = submit(web, headers, {"message": words(20), "stream": True, "metadata": {"delay": 0.05}})
    url = web.events_url(task_id)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=40),
                                 limits=httpx.Limits(max_connections=100)) as http:
        # one follower of a finished task first (it reads the history and ends): the shared pool
        # holds what one opening needs
        done = later(web, headers)
        assert (await http.post(f"{web.base}/api/v1/agents/tasks/{done}/cancel", headers=headers)).status_code == 200
        await follow(http, web.events_url(done), headers)
        before = redis_connections(web.pid, svc.env["REDIS_URL"])
        # then 30 followers of the running task, opened one after another (so the pool never needs
        # more than one connection for the openings): what stays open must not cost connections
        seen = [Followed() for _ in range(30)]
        followers = []
        for s in seen:
            followers.append(asyncio.create_task(follow(http, url, headers, s)))
            await wait_for(lambda s=s: s.events, timeout=10)  # its PENDING event: it is following
        during = redis_connections(web.pid, svc.env["REDIS_URL"])
        with sync_redis.Redis.from_url(svc.env["REDIS_URL"]) as r:
            readers = [c for c in r.client_list() if c["name"] == f"{svc.prefix}followers:{web.pid}"]
            blocked = r.info("clients")["blocked_clients"]
        svc.start_worker()  # no worker until now: every follower waits for the run
        results = await asyncio.gather(*followers)
    # one dedicated reader is the only blocked client, and the only connection the followers add
    # (one blocking read per follower would be 30 more)
    assert len(readers) == 1 and blocked == 1, (readers, blocked)
    assert during <= before + 1, (before, during)
    ids = stream_ids(svc.env["REDIS_URL"], f"{svc.prefix}task:{task_id}:events")
    assert len(ids) > 20
    for r in results:
        assert r.ids == ids and not r.reconnects and not r.retries
        assert r.events[-1].data["state"] == "SUCCESS"
        assert [e.data["index"] for e in r.events if e.name == "chunk"] == list(range(20))


# --- (b)-(d) bounds ----------------------------------------------------------------------------------


@e2e
async def test_per_user_bound_answers_429_and_frees_on_close(service: Callable[..., Service],
                                                             streams: Streams) -> None:
    svc = service(STREAM_MAX_PER_USER="3")
    web = svc.start_web()
    alice, bob, admin = await svc.user("alice"), await svc.user("bob"), await svc.user("root", admin=True)
    url = web.events_url(later(web, alice))
    for _ in range(3):
        assert (await streams.open(url, alice)).status_code == 200
    assert_too_many(await streams.open(url, alice), bound="per user")
    # another user is still served: the bound is per user
    assert (await streams.open(web.events_url(later(web, bob)), bob)).status_code == 200
    # admins are bounded too (an admin may follow anyone's task)
    for _ in range(3):
        assert (await streams.open(url, admin)).status_code == 200
    assert_too_many(await streams.open(url, admin), bound="per user")
    await streams.close_one()  # one of alice's
    await opens_again(streams, url, alice)
    assert_too_many(await streams.open(url, alice), bound="per user")


@e2e
async def test_per_user_bound_holds_across_web_processes(service: Callable[..., Service], streams: Streams) -> None:
    svc = service(STREAM_MAX_PER_USER="3")
    one, two = svc.start_web(), svc.start_web()
    alice = await svc.user("alice")
    task_id = later(one, alice)
    assert (await streams.open(two.events_url(task_id), alice)).status_code == 200
    for _ in range(2):
        assert (await streams.open(one.events_url(task_id), alice)).status_code == 200
    assert_too_many(await streams.open(one.events_url(task_id), alice), bound="per user")
    assert_too_many(await streams.open(two.events_url(task_id), alice), bound="per user")
    await streams.close_one()  # the one on the second process frees a slot on the first
    await opens_again(streams, one.events_url(task_id), alice)


@e2e
async def test_per_process_bound(service: Callable[..., Service], streams: Streams) -> None:
    svc = service(STREAM_MAX_PER_PROCESS="2", STREAM_MAX_PER_USER="10")
    one, two = svc.start_web(), svc.start_web()
    alice, bob = await svc.user("alice"), await svc.user("bob")
    task_a, task_b = later(one, alice), later(one, bob)
    assert (await streams.open(one.events_url(task_a), alice)).status_code == 200
    assert (await streams.open(one.events_url(task_b), bob)).status_code == 200
    assert_too_many(await streams.open(one.events_url(task_a), alice), bound="server")
    assert_too_many(await streams.open(one.events_url(task_b), bob), bound="server")
    # another process has room of its own
    assert (await streams.open(two.events_url(task_a), alice)).status_code == 200
    await streams.close_one()  # alice's on the first process
    await opens_again(streams, one.events_url(task_a), alice)


# --- (e) maximum lifetime -------------------------------------------------------------------------------


@e2e
async def test_a_stream_ends_after_its_lifetime_and_resumes_without_gap_or_duplicate(
        service: Callable[..., Service]) -> None:
    svc = service(STREAM_MAX_SECONDS="1")
    web = svc.start_web()
    svc.start_worker()
    headers = await svc.user()
    task_id = submit(web, headers, {"message": words(30), "stream": True, "metadata": {"delay": 0.1}})
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=20)) as http:
        seen = await follow(http, web.events_url(task_id), headers)
    # the run lasts ~3 s: at least two streams ended by their lifetime, each resumed with its last id
    assert len(seen.reconnects) >= 2 and not seen.retries
    assert all(r.data["reason"] == "max_lifetime" for r in seen.reconnects)
    assert seen.ids == stream_ids(svc.env["REDIS_URL"], f"{svc.prefix}task:{task_id}:events")
    assert [e.data["index"] for e in seen.events if e.name == "chunk"] == list(range(30))
    assert seen.events[-1].data["state"] == "SUCCESS"


# --- (f) Redis restarted under open followers ------------------------------------------------------


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    try:
        yield s.start(workers=1)
    finally:
        s.close()


@e2e
@pytest.mark.slow
async def test_followers_survive_a_redis_restart_and_resume_with_nothing_lost(stack: Stack) -> None:
    task_id = stack.submit(words(60), stream=True, metadata={"delay": 0.1})
    url = f"{stack.base}/api/v1/agents/tasks/{task_id}/events"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as http:
        kept = [Followed(), Followed()]
        running = [asyncio.create_task(follow(http, url, stack.headers, s)) for s in kept]
        left = Followed()  # a client that goes away during the outage and comes back after it

        async def leaving() -> None:
            async with http.stream("GET", url, headers=stack.headers) as resp:
                async for ev in sse_events(resp):
                    left.events.append(ev)

        leaver = asyncio.create_task(leaving())
        await wait_for(lambda: all(sum(e.name == "chunk" for e in s.events) >= 5 for s in [*kept, left]), timeout=20)
        await asyncio.to_thread(stack.stop_redis)
        leaver.cancel()
        await asyncio.wait([leaver])
        await asyncio.to_thread(stack.start_redis)
        resumed = await follow(http, url, stack.headers, last_id=left.last_id)
        results = await asyncio.gather(*running)
    with stack.redis_client() as r:
        ids = [eid.decode() for eid, _ in r.xrange(f"{stack.prefix}task:{task_id}:events")]
    assert left.ids + resumed.ids == ids
    for s in results:
        assert s.ids == ids, (s.retries, len(s.reconnects))
    assert results[0].events[-1].data["state"] in FINISHED


# --- the hub, in process -------------------------------------------------------------------------


@pytest.fixture
async def hub_of(redis_url: str) -> AsyncIterator[Callable[..., FollowerHub]]:
    """FollowerHubs on the session's valkey (closed afterwards), and their pool for writing."""
    hubs: list[FollowerHub] = []
    pool = aioredis.Redis.from_url(redis_url)

    def make(**kwargs: Any) -> FollowerHub:
        def connect() -> aioredis.Redis:
            return aioredis.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=10)

        hub = FollowerHub(connect, pool, wake_key=f"t:wake:{uuid.uuid4().hex}", decode=TaskLive.decode,  # type: ignore[arg-type]
                          block_ms=5000, **kwargs)
        hubs.append(hub)
        return hub

    make.pool = pool  # type: ignore[attr-defined]
    yield make
    for hub in hubs:
        await hub.aclose()
    await pool.aclose()


async def append(pool: aioredis.Redis, key: str, *indexes: int) -> list[str]:
    ids = []
    for i in indexes:
        event = ChunkEvent(index=i, content=f"c{i}", attempt=1, progress=50)
        ids.append((await pool.xadd(key, {"e": msgspec.json.encode(event)})).decode())
    return ids


async def received(follower: Follower, n: int, *, within: float = 2.0) -> list[int]:
    """The chunk indexes of the next `n` entries handed to `follower` (fail after `within` s: the
    reader blocks 5 s, so a missed wake-up shows)."""
    got: list[int] = []
    async with asyncio.timeout(within):
        while len(got) < n:
            got += [e.index for _, e in await follower.next(within) if isinstance(e, ChunkEvent)]
    return got


async def test_hub_a_follower_joining_behind_the_cursor_gets_no_gap_and_the_others_no_duplicate(
        hub_of: Callable[..., FollowerHub]) -> None:
    hub, pool = hub_of(), hub_of.pool  # type: ignore[attr-defined]
    ids = await append(pool, "t:k", 0, 1, 2, 3, 4)
    ahead = hub.subscribe("t:k", "0")
    assert await received(ahead, 5) == [0, 1, 2, 3, 4]
    ids += await append(pool, "t:k", 5)
    assert await received(ahead, 1) == [5]
    # the reader's cursor is past 5: a follower at 1 makes it read 2..5 again, for that one only
    behind = hub.subscribe("t:k", ids[1])
    assert await received(behind, 4) == [2, 3, 4, 5]
    await append(pool, "t:k", 6)
    assert await received(behind, 1) == [6]
    assert await received(ahead, 1) == [6]  # nothing twice: 6 is the first thing it got since 5
    # one that joins at 0 while the blocked read (after 6) returns 7: 7 alone would be a gap
    late = hub.subscribe("t:k", ids[0])
    await append(pool, "t:k", 7)
    assert await received(late, 7) == [1, 2, 3, 4, 5, 6, 7]
    assert await received(ahead, 1) == [7] and await received(behind, 1) == [7]
    await append(pool, "t:k", 8)
    for follower in (ahead, behind, late):
        assert await received(follower, 1) == [8]
        assert not follower.inbox
    assert hub.followers == 3
    for follower in (ahead, behind, late):
        hub.unsubscribe(follower)
    assert hub.followers == 0


async def test_hub_wakes_its_blocked_reader_for_a_new_key(hub_of: Callable[..., FollowerHub]) -> None:
    hub, pool = hub_of(), hub_of.pool  # type: ignore[attr-defined]
    first = hub.subscribe("t:a", "0")
    await append(pool, "t:a", 0)
    assert await received(first, 1) == [0]  # the reader is running, and now blocks on t:a alone
    for key in ("t:b", "t:c"):
        late = hub.subscribe(key, "0")
        await append(pool, key, 7)
        assert await received(late, 1, within=2.0) == [7]  # not the 5 s block's end


async def test_hub_drops_a_follower_that_falls_behind_and_lets_all_go_when_closed(
        hub_of: Callable[..., FollowerHub]) -> None:
    hub, pool = hub_of(max_inbox=3), hub_of.pool  # type: ignore[attr-defined]
    slow = hub.subscribe("t:s", "0")
    await append(pool, "t:s", 0, 1)
    await wait_for(lambda: len(slow.inbox) == 2, timeout=2)  # handed over, not taken: the client is slow
    await append(pool, "t:s", 2, 3)
    await wait_for(lambda: slow.dropped, timeout=2)
    kept = [e.index for _, e in await slow.next(0)]
    assert kept == list(range(len(kept))) and len(kept) >= 2  # what it had, in order; then it ends (and resumes)
    assert hub.followers == 0
    other = hub.subscribe("t:o", "0")
    await hub.aclose()
    assert other.dropped and await other.next(5) == []
    assert hub.subscribe("t:o", "0").dropped  # a closed hub takes nobody


async def test_hub_wakes_a_burst_of_followers_in_slices_letting_other_work_in_between(
        hub_of: Callable[..., FollowerHub]) -> None:
    hub, pool = hub_of(), hub_of.pool  # type: ignore[attr-defined]
    many = [hub.subscribe("t:burst", "0") for _ in range(5 * hub_module.WAKE_SLICE)]
    heard: list[int] = []

    async def listen(follower: Follower) -> None:
        await received(follower, 1)
        heard.append(1)

    listeners = [asyncio.create_task(listen(f)) for f in many]
    await asyncio.sleep(0.05)  # all of them waiting, the reader blocked on the key
    seen_between: list[int] = []

    async def other_work() -> None:  # another request's steps while the burst goes out
        while len(heard) < len(many):
            seen_between.append(len(heard))
            await asyncio.sleep(0)

    probe = asyncio.create_task(other_work())
    await append(pool, "t:burst", 0)
    await asyncio.wait_for(asyncio.gather(*listeners), 5)
    await probe
    # the other work ran while some, but not all, had their event: the burst did not hold it up
    assert any(0 < n < len(many) for n in seen_between), seen_between[-5:]


# --- the benchmark, small ---------------------------------------------------------------------------


@e2e
@pytest.mark.slow
def test_bench_followers_smoke(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "scripts/bench_followers.py", "--followers", "20", "--tasks", "2",
                           "--chunks", "10", "--delay", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every follower saw every event: yes" in done.stdout, done.stdout
