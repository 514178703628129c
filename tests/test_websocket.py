"""GET /api/v1/ws against real uvicorn and worker processes, with a real WebSocket client
(`websockets`) and from headless Chromium: many tasks over one connection (every event once, in
order, the same events and ids as SSE, one Redis reader), resume after a reconnect, auth by header
and by first message, ownership, the per-user bound, the lifetime, unsubscribe, bad messages, and
the Origin check that stands in for CORS."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.exceptions import InvalidStatus

from agent_service.cli.embedded import free_port
from tests.support.cdp import Browser, require_chromium
from tests.support.origin_page import PageServer
from tests.support.processes import E2E_EMAIL, E2E_PASSWORD, Live, Process, bootstrap_user
from tests.support.sse import parse_sse
from tests.support.waiting import wait_for, wait_http_ok
from tests.support.ws_client import open_feed, ws_url

pytestmark = [pytest.mark.e2e, pytest.mark.sqlite_only]  # sockets and Redis; the SQL store plays no part
TASKS = "/api/v1/agents/tasks"
Events = list[tuple[str | None, dict[str, Any]]]


@pytest.fixture
def start_service(env: dict[str, str], spawn: Callable[..., Process]) -> Callable[..., Live]:
    """uvicorn + a worker with settings of the test's own (blocking: call it in a thread)."""

    def start(**extra: str) -> Live:
        api_key = bootstrap_user(env)
        port = free_port()
        worker = spawn("worker", env, **extra)
        web = spawn("web", env, PORT=str(port), **extra)
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health/ready", on_fail=lambda: web.output()[-3000:] + worker.output()[-3000:])
        return Live(base, web, worker, api_key)

    return start


@pytest.fixture
async def api(start_service: Callable[..., Live]) -> AsyncIterator[tuple[Live, httpx.AsyncClient]]:
    live = await asyncio.to_thread(start_service)
    async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=15) as client:
        yield live, client


async def queue(api: httpx.AsyncClient, message: str, *, delay: float = 0.05, **extra: Any) -> str:
    resp = await api.post("/api/v1/agents/echo/invoke-async",
                          json={"message": message, "stream": True, "metadata": {"delay": delay}, **extra})
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


async def sse_history(api: httpx.AsyncClient, task_id: str) -> Events:
    """What the SSE route replays of a finished task: (id, data) of every event."""
    resp = await api.get(f"{TASKS}/{task_id}/events")
    assert resp.status_code == 200, resp.text
    return [(e.id, e.data) for e in parse_sse(resp.text)]


async def stalled(api: httpx.AsyncClient, ids: list[str], finished: set[str], got: dict[str, Events]) -> str:
    """Why a wait for the tasks' ends timed out: each unfinished task's state, what the socket
    brought of it and how much SSE has."""
    lines = []
    for task_id in [t for t in ids if t not in finished][:5]:
        state = (await api.get(f"{TASKS}/{task_id}/status")).json()["state"]
        lines.append(f"{task_id} {state}: {len(got[task_id])} events on the socket, "
                     f"{len(await sse_history(api, task_id))} in SSE")
    return f"{len(ids) - len(finished)} tasks never ended on the socket:\n" + "\n".join(lines)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


# ---------------------------------------------------------------- many tasks, one connection

@pytest.mark.timeout(120)
async def test_fifty_tasks_over_one_connection_arrive_once_in_order_as_sse_has_them(
        api: tuple[Live, httpx.AsyncClient], env: dict[str, str]) -> None:
    live, client = api
    ids = await asyncio.gather(*[queue(client, words(10, f"t{n}-"), delay=0.1) for n in range(50)])
    got: dict[str, Events] = defaultdict(list)
    finished: set[str] = set()
    readers: list[int] = []
    redis = aioredis.Redis.from_url(env["REDIS_URL"])
    try:
        async with open_feed(live.base, headers=live.headers) as feed:
            for task_id in ids:
                await feed.send(type="subscribe", task_id=task_id)
            while len(finished) < len(ids):
                try:
                    m = await feed.recv(timeout=30)
                except TimeoutError:
                    raise AssertionError(await stalled(client, ids, finished, got)) from None
                if m["type"] == "event":
                    assert m["task_id"] not in finished, "an event after the task's end"
                    got[m["task_id"]].append((m["id"], m["event"]))
                    if m["event"]["type"] == "chunk" and len(readers) < 3:  # while many follow live
                        clients = await redis.client_list()
                        readers.append(sum("followers:" in (c.get("name") or "") for c in clients))
                elif m["type"] == "unsubscribed":
                    assert m["reason"] == "finished" and m["last_event_id"] == got[m["task_id"]][-1][0]
                    finished.add(m["task_id"])
                else:
                    assert m["type"] == "subscribed" and m["task_id"] in ids, m
    finally:
        await redis.aclose()
    assert readers == [1, 1, 1], "every subscription of the process shares one Redis reader"
    for task_id in ids:
        history = await sse_history(client, task_id)
        assert got[task_id] == history, task_id  # the same events, ids and order, none twice
        chunks = [e for _, e in history if e["type"] == "chunk"]
        assert [c["index"] for c in chunks] == list(range(10)) and history[-1][1]["state"] == "SUCCESS"


@pytest.mark.timeout(120)
async def test_resuming_with_the_last_ids_after_reconnects_misses_nothing(start_service: Callable[..., Live]) -> None:
    """A 1.5 s lifetime: the server ends each connection with `reconnect` (its last ids) and 4000;
    once the client drops a connection itself. Resubscribing with the last ids loses nothing."""
    live = await asyncio.to_thread(start_service, STREAM_MAX_SECONDS="1.5")
    async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=15) as client:
        ids = await asyncio.gather(*[queue(client, words(25, f"t{n}-"), delay=0.15) for n in range(8)])
        last: dict[str, str | None] = dict.fromkeys(ids)
        got: dict[str, Events] = defaultdict(list)
        finished: set[str] = set()
        server_ends = client_drops = 0
        while len(finished) < len(ids):
            assert server_ends + client_drops < 20
            async with open_feed(live.base, headers=live.headers) as feed:
                following = [t for t in ids if t not in finished]
                for task_id in following:
                    extra = {"last_event_id": last[task_id]} if last[task_id] else {}
                    await feed.send(type="subscribe", task_id=task_id, **extra)
                received = 0
                while len(finished) < len(ids):
                    m = await feed.recv(timeout=15)
                    if m["type"] == "event":
                        got[m["task_id"]].append((m["id"], m["event"]))
                        last[m["task_id"]] = m["id"]
                        received += 1
                        if server_ends == 1 and client_drops == 0 and received == 20:
                            client_drops += 1
                            break  # leave without a word: the next connection resumes all the same
                    elif m["type"] == "unsubscribed":
                        finished.add(m["task_id"])
                    elif m["type"] == "reconnect":
                        assert m["reason"] == "max_lifetime"
                        assert m["last_event_ids"] == {t: last[t] for t in following if t not in finished}
                        code, reason = await feed.closed()
                        assert code == 4000 and reason.startswith("max_lifetime"), (code, reason)
                        server_ends += 1
                        break
        assert server_ends >= 1 and client_drops == 1
        for task_id in ids:
            assert got[task_id] == await sse_history(client, task_id), task_id


# ---------------------------------------------------------------- auth, ownership, bounds

async def jwt(client: httpx.AsyncClient) -> str:
    resp = await client.post("/api/v1/auth/token", json={"email": E2E_EMAIL, "password": E2E_PASSWORD})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


@pytest.mark.timeout(90)
async def test_auth_by_header_or_first_message_and_bad_auth_closes(api: tuple[Live, httpx.AsyncClient]) -> None:
    live, client = api
    key, token = live.headers["X-API-Key"], await jwt(client)
    me = (await client.get("/api/v1/auth/me")).json()["user_id"]
    for how in ({"headers": {"X-API-Key": key}}, {"headers": {"Authorization": f"Bearer {token}"}},
                {"token": key}, {"token": token}):
        async with open_feed(live.base, ready=False, **how) as feed:  # type: ignore[arg-type]
            ready = await feed.recv()
            assert ready == {"type": "ready", "user_id": me, "max_subscriptions": 100, "expires_in": 600}, how

    # a bad credential header: the upgrade itself is refused, like a request
    for headers in ({"X-API-Key": "sk_live_" + "x" * 43}, {"Authorization": "Bearer not.a.jwt"},
                    {"X-API-Key": key, "Authorization": f"Bearer {token}"}):
        with pytest.raises(InvalidStatus) as refused:
            async with open_feed(live.base, headers=headers):
                pass
        assert refused.value.response.status_code == 403, headers

    async def closes_with(first: str | bytes | None, code: int, error: str) -> None:
        async with open_feed(live.base, ready=False) as feed:
            if first is not None:
                await feed.conn.send(first)
            m = await feed.recv(timeout=10)
            assert m["type"] == "error" and m["code"] == error and m["status"] in (401, 403), m
            assert (await feed.closed())[0] == code

    await closes_with(json.dumps({"type": "auth", "token": "sk_live_" + "y" * 43}), 4401, "invalid_api_key")
    await closes_with(json.dumps({"type": "auth", "token": token[:-3] + "abc"}), 4401, "invalid_token")
    await closes_with(json.dumps({"type": "subscribe", "task_id": "t"}), 4401, "auth_required")
    await closes_with("not json", 4401, "auth_required")
    await closes_with(None, 4401, "auth_timeout")  # nothing within 5 s
    minted = await client.post("/api/v1/api-keys", json={"name": "no-read", "scopes": ["agents:invoke"]})
    assert minted.status_code == 201, minted.text
    await closes_with(json.dumps({"type": "auth", "token": minted.json()["key"]}), 4403, "insufficient_scope")


@pytest.mark.timeout(90)
async def test_another_users_task_is_not_found_and_an_admin_may_follow_it(
        api: tuple[Live, httpx.AsyncClient], env: dict[str, str]) -> None:
    live, client = api
    task_id = await queue(client, words(5))
    other = await asyncio.to_thread(bootstrap_user, env, "other@example.com")
    admin = await asyncio.to_thread(bootstrap_user, env, "root@example.com", admin=True)
    async with open_feed(live.base, token=other) as feed:
        await feed.send(type="subscribe", task_id=task_id)
        await feed.send(type="subscribe", task_id="no-such-task")
        await feed.send(type="ping")
        seen = await feed.until(lambda m: m["type"] == "pong")
    assert seen == [
        {"type": "error", "code": "task_not_found", "status": 404, "task_id": task_id,
         "detail": f"No task with id {task_id!r}."},
        {"type": "error", "code": "task_not_found", "status": 404, "task_id": "no-such-task",
         "detail": "No task with id 'no-such-task'."},
        {"type": "pong"}], "an error, never the task's events"
    async with open_feed(live.base, headers={"X-API-Key": admin}) as feed:
        await feed.send(type="subscribe", task_id=task_id)
        seen = await feed.until(lambda m: m["type"] == "unsubscribed")
    assert [(m["id"], m["event"]) for m in seen if m["type"] == "event"] == await sse_history(client, task_id)


@pytest.mark.timeout(90)
async def test_a_connection_is_one_stream_slot_of_the_per_user_bound(start_service: Callable[..., Live]) -> None:
    live = await asyncio.to_thread(start_service, STREAM_MAX_PER_USER="2")
    async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=15) as client:
        pending = await queue(client, "later", delay_seconds=3600)
        async with open_feed(live.base, headers=live.headers), \
                client.stream("GET", f"{TASKS}/{pending}/events") as sse:  # an SSE follower holds a slot too
            assert sse.status_code == 200
            async with open_feed(live.base, headers=live.headers, ready=False) as third:
                m = await third.recv()
                assert m["type"] == "error" and m["code"] == "too_many_streams" and m["status"] == 429, m
                assert m["retry_after"] >= 1
                assert (await third.closed())[0] == 1013
            refused = await client.get(f"{TASKS}/{pending}/events")
            assert refused.status_code == 429 and refused.json()["code"] == "too_many_streams"

        async def admitted() -> bool:  # both slots come back when their streams end
            async with open_feed(live.base, headers=live.headers, ready=False) as a, \
                    open_feed(live.base, headers=live.headers, ready=False) as b:
                return (await a.recv())["type"] == (await b.recv())["type"] == "ready"

        assert await wait_for(admitted, timeout=10, interval=0.1)


@pytest.mark.timeout(90)
async def test_unsubscribe_stops_a_tasks_events(api: tuple[Live, httpx.AsyncClient]) -> None:
    live, client = api
    task_id = await queue(client, words(30), delay=0.1)
    async with open_feed(live.base, headers=live.headers) as feed:
        await feed.send(type="subscribe", task_id=task_id)
        await feed.until(lambda m: m["type"] == "event" and m["event"]["type"] == "chunk")
        await feed.send(type="unsubscribe", task_id=task_id)
        ack = (await feed.until(lambda m: m["type"] == "unsubscribed"))[-1]
        assert ack["reason"] == "requested" and ack["task_id"] == task_id and ack["last_event_id"]

        async def done() -> bool:
            return (await client.get(f"{TASKS}/{task_id}/status")).json()["state"] == "SUCCESS"

        await wait_for(done, timeout=20, interval=0.1)
        await feed.send(type="ping")  # answered after anything the server would still send
        assert await feed.until(lambda m: m["type"] == "pong") == [{"type": "pong"}]
        await feed.send(type="unsubscribe", task_id=task_id)  # idempotent
        assert (await feed.recv())["type"] == "unsubscribed"


@pytest.mark.timeout(90)
async def test_bad_messages_get_an_error_and_the_connection_goes_on(api: tuple[Live, httpx.AsyncClient]) -> None:
    live, client = api
    later = [await queue(client, "later", delay_seconds=3600) for _ in range(101)]
    bad: list[tuple[str | bytes, str]] = [
        ("not json", "malformed_message"), (b"\x00binary", "malformed_message"), ("[1, 2]", "invalid_message"),
        (json.dumps({"type": "dance"}), "invalid_message"), (json.dumps({"type": "subscribe"}), "invalid_message"),
        (json.dumps({"type": "subscribe", "task_id": later[0], "extra": 1}), "invalid_message"),
        (json.dumps({"type": "subscribe", "task_id": later[0], "last_event_id": "x"}), "invalid_message"),
        (json.dumps({"type": "subscribe", "task_id": later[0], "last_event_id": "99999999999999999999-0"}),
         "invalid_message"),
        (json.dumps({"type": "subscribe", "task_id": ""}), "invalid_message"),
        ("[" * 100 + "]" * 100, "json_too_deep"), (json.dumps({"type": "auth", "token": "x"}), "already_authenticated"),
    ]
    async with open_feed(live.base, headers=live.headers) as feed:
        for frame, code in bad:
            await feed.conn.send(frame)
            m = await feed.recv()
            assert m["type"] == "error" and m["code"] == code and 400 <= m["status"] < 500, (frame, m)
        for task_id in later[:100]:
            await feed.send(type="subscribe", task_id=task_id)
        acks = await feed.until(lambda m: m["type"] == "subscribed" and m["task_id"] == later[99])
        assert {m["task_id"] for m in acks if m["type"] == "subscribed"} == set(later[:100])
        await feed.send(type="subscribe", task_id=later[100])
        await feed.send(type="subscribe", task_id=later[0])
        await feed.send(type="ping")
        errors = [m for m in await feed.until(lambda m: m["type"] == "pong") if m["type"] == "error"]
        assert [(e["code"], e["task_id"]) for e in errors] == [("too_many_subscriptions", later[100]),
                                                               ("already_subscribed", later[0])]
        await feed.conn.send("x" * 20_000)  # over the frame bound: the server closes, 1009
        assert (await feed.closed())[0] == 1009


@pytest.mark.timeout(90)
async def test_origins_not_allowed_are_refused_at_the_upgrade(start_service: Callable[..., Live]) -> None:
    live = await asyncio.to_thread(start_service, CORS_ORIGINS="http://app.example")
    for origin in ("http://app.example", live.base, None):  # allowed, same origin, not a browser
        async with open_feed(live.base, headers=live.headers, origin=origin):
            pass
    for origin in ("http://evil.example", "http://app.example:8080", "null"):
        with pytest.raises(InvalidStatus) as refused:
            async with open_feed(live.base, headers=live.headers, origin=origin):
                pass
        assert refused.value.response.status_code == 403, origin


# ---------------------------------------------------------------- headless Chromium

FOLLOW_JS = """
(() => {
  const out = window.__ws = {messages: [], opened: false, closed: null, failed: false};
  const socket = new WebSocket(%(url)s);
  socket.onopen = () => { out.opened = true; socket.send(JSON.stringify({type: "auth", token: %(key)s})); };
  socket.onmessage = (e) => {
    const m = JSON.parse(e.data);
    out.messages.push(m);
    if (m.type === "ready") socket.send(JSON.stringify({type: "subscribe", task_id: %(task)s}));
    if (m.type === "unsubscribed") socket.close(1000);
  };
  socket.onerror = () => { out.failed = true; };
  socket.onclose = (e) => { out.closed = {code: e.code}; };
  return true;
})()
"""


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_a_page_follows_a_task_over_a_websocket(start_service: Callable[..., Live]) -> None:
    chromium = require_chromium()
    message = words(20, "word")
    with PageServer() as site, PageServer() as stranger:
        live = await asyncio.to_thread(start_service, CORS_ORIGINS=site.origin)
        key = live.headers["X-API-Key"]
        async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=15) as client:
            task_id = await queue(client, message, delay=0.1)
            script = FOLLOW_JS % {"url": json.dumps(ws_url(live.base)), "key": json.dumps(key),
                                  "task": json.dumps(task_id)}
            async with Browser.launch(chromium) as page:
                await page.navigate(site.url)
                await page.evaluate(script)
                await page.wait_for("window.__ws.closed", timeout=30)
                seen = await page.evaluate("window.__ws")
                errors = list(page.errors)
                await page.navigate(stranger.url)  # an origin CORS_ORIGINS does not name
                await page.evaluate(script)
                await page.wait_for("window.__ws.closed", timeout=10)
                refused = await page.evaluate("window.__ws")
                stranger_errors = list(page.errors)
            history = await sse_history(client, task_id)
    assert errors == [], errors
    types = [m["type"] for m in seen["messages"]]
    assert types[:2] == ["ready", "subscribed"] and types[-1] == "unsubscribed", types
    events = [(m["id"], m["event"]) for m in seen["messages"] if m["type"] == "event"]
    assert events == history and "".join(e["content"] for _, e in events if e["type"] == "chunk") == message
    assert seen["closed"] == {"code": 1000}
    assert refused["opened"] is False and refused["failed"] is True and refused["messages"] == []
    assert refused["closed"]["code"] == 1006
    assert any("403" in line for line in stranger_errors), stranger_errors  # Chromium says why
