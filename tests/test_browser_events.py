"""Browser access to a task's events: stream tokens (`POST …/tasks/{id}/stream-token`, then
`GET …/tasks/{id}/events?token=`) in process, against real uvicorn (an open stream outlives its
token; the token is never logged), and a real EventSource of another origin in headless Chromium
(scripts/install-chromium; without a chromium binary those skip, unless CI=true, where they fail).

The CORS headers themselves are tested in process in tests/test_cors.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_service.cli.embedded import free_port
from agent_service.clock import utcnow
from agent_service.config import Settings
from tests.support.apps import Client, add_user, app_client
from tests.support.cdp import Browser, require_chromium
from tests.support.logs import logged
from tests.support.origin_page import PageServer
from tests.support.problems import assert_problem
from tests.support.processes import Live, Process, bootstrap_user
from tests.support.sse import Event, answer, is_final, parse_sse, sse_events
from tests.support.tasks import finished, submit
from tests.support.waiting import wait_for, wait_http_ok

pytestmark = pytest.mark.sqlite_only  # tokens, headers and streams: the SQL store plays no part
TASKS = "/api/v1/agents/tasks"
MESSAGE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture
async def client(settings: Settings, start_worker: Callable[..., Any]) -> AsyncIterator[Client]:
    async with app_client(settings) as c:
        await start_worker(settings)
        yield c


@pytest.fixture
async def anonymous(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    """The same app, as an EventSource sees it: no X-API-Key, no Authorization."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app), base_url="http://testserver") as c:
        yield c


async def done_task(client: Client, message: str = MESSAGE) -> str:
    task_id = await submit(client, {"message": message, "stream": True})
    assert (await finished(client, task_id))["state"] == "SUCCESS"
    return task_id


async def mint(client: Client, task_id: str, **headers: str) -> str:
    resp = await client.post(f"{TASKS}/{task_id}/stream-token", headers=headers)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["token"])


async def events(http: httpx.AsyncClient, task_id: str, token: str, **params: str) -> list[Event]:
    resp = await http.get(f"{TASKS}/{task_id}/events", params={"token": token, **params})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    return parse_sse(resp.text)


# ---------------------------------------------------------------- minting, in process

async def test_a_token_for_your_own_task_opens_its_events(client: Client, anonymous: httpx.AsyncClient,
                                                          settings: Settings) -> None:
    task_id = await done_task(client)
    resp = await client.post(f"{TASKS}/{task_id}/stream-token")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"token", "expires_in", "task_id"}
    assert body["task_id"] == task_id and body["expires_in"] == settings.stream_token_ttl == 60
    assert resp.headers["cache-control"] == "no-store"
    seen = await events(anonymous, task_id, body["token"])
    assert answer(seen) == MESSAGE
    assert seen[-1].name == "state" and seen[-1].data["state"] == "SUCCESS"
    assert {e.name for e in seen} <= {"state", "progress", "chunk"} and all(e.id for e in seen)


async def test_another_users_task_is_not_found_and_an_admin_may_mint(client: Client,
                                                                     anonymous: httpx.AsyncClient) -> None:
    task_id = await done_task(client)
    peeker = await add_user(client.app, "peeker@example.com")
    assert_problem(await client.post(f"{TASKS}/{task_id}/stream-token", headers={"X-API-Key": peeker}), 404)
    assert_problem(await client.post(f"{TASKS}/no-such-task/stream-token"), 404)
    admin = await add_user(client.app, "admin@example.com", admin=True)
    assert answer(await events(anonymous, task_id, await mint(client, task_id, **{"X-API-Key": admin}))) == MESSAGE


async def test_minting_needs_the_tasks_read_scope(client: Client) -> None:
    task_id = await done_task(client)
    invoker = await add_user(client.app, "invoker@example.com", scopes=("agents:invoke",))
    resp = await client.post(f"{TASKS}/{task_id}/stream-token", headers={"X-API-Key": invoker})
    assert_problem(resp, 403)


# ---------------------------------------------------------------- where a token counts, in process

async def test_a_token_opens_only_the_task_it_names(client: Client, anonymous: httpx.AsyncClient) -> None:
    mine, other = await done_task(client), await done_task(client, "another task")
    token = await mint(client, mine)
    resp = await anonymous.get(f"{TASKS}/{other}/events", params={"token": token})
    assert_problem(resp, 401, "invalid_stream_token")
    for forged in ("nonsense", token[:-4] + "AAAA", "x" * 5000):
        assert_problem(await anonymous.get(f"{TASKS}/{mine}/events", params={"token": forged}), 401,
                       "invalid_stream_token")


async def test_a_token_is_no_credential_anywhere_else(client: Client, anonymous: httpx.AsyncClient) -> None:
    task_id = await done_task(client)
    token = await mint(client, task_id)
    for method, path in [("GET", f"{TASKS}/{task_id}"), ("GET", f"{TASKS}/{task_id}/status"), ("GET", TASKS),
                         ("POST", f"{TASKS}/{task_id}/cancel"), ("POST", f"{TASKS}/{task_id}/stream-token"),
                         ("GET", "/api/v1/agents"), ("GET", "/api/v1/auth/me")]:
        bare = await anonymous.request(method, path)
        with_token = await anonymous.request(method, path, params={"token": token})
        assert_problem(with_token, 401)
        assert (with_token.status_code, with_token.json()["code"]) == (bare.status_code, bare.json()["code"]), path
    as_bearer = await anonymous.get(f"{TASKS}/{task_id}", headers={"Authorization": f"Bearer {token}"})
    assert_problem(as_bearer, 401)
    on_events = await anonymous.get(f"{TASKS}/{task_id}/events", headers={"Authorization": f"Bearer {token}"})
    assert_problem(on_events, 401)
    assert_problem(await anonymous.get(f"{TASKS}/{task_id}", headers={"X-API-Key": token}), 401)
    # a credential header is the caller even beside a valid ?token= (one credential, never a merge)
    peeker = await add_user(client.app, "peeker@example.com")
    beside = await anonymous.get(f"{TASKS}/{task_id}/events", params={"token": token}, headers={"X-API-Key": peeker})
    assert_problem(beside, 404)


async def test_an_expired_token_is_refused(client: Client, anonymous: httpx.AsyncClient, settings: Settings) -> None:
    task_id = await done_task(client)
    deps = client.app.state.deps
    deps.clock = lambda: utcnow() - timedelta(seconds=settings.stream_token_ttl + 1)  # minted a TTL ago
    token = await mint(client, task_id)
    deps.clock = utcnow
    assert_problem(await anonymous.get(f"{TASKS}/{task_id}/events", params={"token": token}), 401,
                   "stream_token_expired")


async def test_a_token_expires_by_the_apps_clock(client: Client, anonymous: httpx.AsyncClient,
                                                 settings: Settings) -> None:
    task_id = await done_task(client)
    token = await mint(client, task_id)
    later = utcnow() + timedelta(seconds=settings.stream_token_ttl + 1)
    client.app.state.deps.clock = lambda: later
    assert_problem(await anonymous.get(f"{TASKS}/{task_id}/events", params={"token": token}), 401,
                   "stream_token_expired")


async def test_last_event_id_in_the_query_resumes_and_the_header_wins(client: Client,
                                                                     anonymous: httpx.AsyncClient) -> None:
    task_id = await done_task(client, " ".join(f"w{i}" for i in range(12)))
    full = await events(anonymous, task_id, await mint(client, task_id))
    ids = [e.id for e in full]
    assert len(ids) > 12 and len(set(ids)) == len(ids)
    k = len(full) // 2
    resumed = await events(anonymous, task_id, await mint(client, task_id), last_event_id=str(ids[k]))
    assert resumed == full[k + 1:]
    header = await anonymous.get(f"{TASKS}/{task_id}/events", params={"token": await mint(client, task_id),
                                 "last_event_id": str(ids[0])}, headers={"Last-Event-ID": str(ids[k + 2])})
    assert parse_sse(header.text) == full[k + 3:]
    bad = await anonymous.get(f"{TASKS}/{task_id}/events",
                              params={"token": await mint(client, task_id), "last_event_id": "nonsense"})
    assert_problem(bad, 422)



async def test_the_events_route_documents_its_query_parameters(client: Client) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"][f"{TASKS}/{{task_id}}/events"]["get"]
    assert {("token", "query"), ("last_event_id", "query")} <= {(p["name"], p["in"]) for p in operation["parameters"]}

# ---------------------------------------------------------------- real uvicorn and a worker

@pytest.fixture
def start_service(env: dict[str, str], spawn: Callable[..., Process]) -> Callable[..., Live]:
    """`live_service` with settings of the test's own (CORS_ORIGINS, STREAM_TOKEN_TTL) for both processes.
    Blocking (it bootstraps the user with asyncio.run): an async test calls it in a thread."""

    def start(**extra: str) -> Live:
        api_key = bootstrap_user(env)
        port = free_port()
        worker = spawn("worker", env, **extra)
        web = spawn("web", env, PORT=str(port), **extra)
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health/ready", on_fail=lambda: web.output()[-3000:] + worker.output()[-3000:])
        return Live(base, web, worker, api_key)

    return start


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_an_open_stream_outlives_its_token_which_is_never_logged(start_service: Callable[..., Live],
                                                                        tmp_path: Path) -> None:
    # the shortest TTL there is (the test waits it out), and 40 chunks 0.2 s apart: still running by then
    live = await asyncio.to_thread(start_service, STREAM_TOKEN_TTL="5")
    message = " ".join(f"w{i}" for i in range(40))
    async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=httpx.Timeout(10, read=30)) as api, \
            httpx.AsyncClient(base_url=live.base, timeout=httpx.Timeout(10, read=30)) as browser:
        queued = await api.post("/api/v1/agents/echo/invoke-async",
                                json={"message": message, "stream": True, "metadata": {"delay": 0.2}})
        assert queued.status_code == 202, queued.text
        task_id = queued.json()["task_id"]
        url = f"{TASKS}/{task_id}/events"
        token = (await api.post(f"{TASKS}/{task_id}/stream-token")).json()["token"]
        seen: list[Event] = []

        async def read() -> None:
            async with browser.stream("GET", url, params={"token": token}) as resp:
                assert resp.status_code == 200, (await resp.aread()).decode()
                async for event in sse_events(resp):
                    seen.append(event)
                    if is_final(event):
                        return

        reader = asyncio.create_task(read())
        await wait_for(lambda: any(e.name == "chunk" for e in seen) or reader.done(), timeout=15)

        async def refused() -> httpx.Response | None:
            # a bad last_event_id is answered (422) only once the token got past authentication: a
            # probe that never opens a second stream
            probe = await browser.get(url, params={"token": token, "last_event_id": "nonsense"})
            assert probe.status_code in (401, 422), probe.text
            return probe if probe.status_code == 401 else None

        expired = await wait_for(refused, timeout=10, interval=0.1)
        assert expired.json()["code"] == "stream_token_expired"
        chunks_then = sum(e.name == "chunk" for e in seen)
        assert not reader.done() and chunks_then < 40, "the task ended before its token expired: nothing shown"
        await asyncio.wait_for(reader, 30)
        assert sum(e.name == "chunk" for e in seen) == 40 and answer(seen) == message
        assert seen[-1].name == "state" and seen[-1].data["state"] == "SUCCESS"

        # a new EventSource resumes with a fresh token and the last id it saw: the rest, none twice
        fresh = (await api.post(f"{TASKS}/{task_id}/stream-token")).json()["token"]
        k = len(seen) // 2
        resp = await browser.get(url, params={"token": fresh, "last_event_id": str(seen[k].id)})
        assert parse_sse(resp.text) == seen[k + 1:]

    live.web.stop()
    live.worker.stop()
    web_log = live.web.output()
    assert logged(web_log, path=url) and "stream_token_expired" in web_log  # those requests were logged
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:  # logs, the SQLite file (audit rows), var/
        data = path.read_bytes()
        assert token.encode() not in data and fresh.encode() not in data, f"a stream token is in {path}"


# ---------------------------------------------------------------- a real EventSource in Chromium

@pytest.fixture
def chromium() -> str:
    return require_chromium()


def js(value: object) -> str:
    """A Python value as a JavaScript literal (for safe interpolation into evaluated code)."""
    return json.dumps(value)


def cors_complaints(lines: list[str]) -> list[str]:
    return [line for line in lines if "cors" in line.lower() or "access-control" in line.lower()]


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("lifetime", ["600", "0.8"], ids=["one-stream", "server-ends-streams"])
async def test_an_event_source_of_another_origin_follows_a_task(chromium: str, start_service: Callable[..., Live],
                                                              lifetime: str) -> None:
    """With a short STREAM_MAX_SECONDS the server ends each stream with a `reconnect` event, and the
    EventSource comes back by itself, cross-origin, with its Last-Event-ID and the same token."""
    started = time.monotonic()
    message = " ".join(f"word{i}" for i in range(30))
    with PageServer() as site:
        live = await asyncio.to_thread(start_service, CORS_ORIGINS=site.origin, STREAM_MAX_SECONDS=lifetime)
        assert site.origin != live.base  # another port: another origin
        async with Browser.launch(chromium) as page:
            await page.navigate(site.url)
            assert await page.evaluate("location.origin") == site.origin
            task_id = await page.evaluate(f"followTask({js(live.base)}, {js(live.headers['X-API-Key'])}, "
                                          f"{js(message)})")
            await page.wait_for("window.__follow.done", timeout=30)
            seen = await page.evaluate("window.__follow")
            errors = list(page.errors)
    # the exposed headers were readable to the page's script
    assert seen["queued"]["status"] == 202 and seen["queued"]["requestId"], seen["queued"]
    assert seen["queued"]["location"].endswith(f"/agents/tasks/{task_id}/status") and seen["queued"]["rateLimit"]
    assert seen["minted"] == {"status": 201, "expiresIn": 60, "taskId": task_id}
    every = [Event(e["name"], e["id"] or None, e["data"]) for e in seen["events"]]
    reconnects = [e for e in every if e.name == "reconnect"]
    got = [e for e in every if e.name != "reconnect"]
    assert {e.name for e in got} <= {"state", "progress", "chunk"}, every
    assert answer(got) == message
    assert [e.data["index"] for e in got if e.name == "chunk"] == list(range(30)), "every chunk once, in order"
    assert got[-1].name == "state" and got[-1].data["state"] == "SUCCESS"
    assert len({e.id for e in got}) == len(got) and all(e.id for e in got), "every event once, each with its id"
    if lifetime == "600":
        assert reconnects == [] and seen["connectionErrors"] == [], every
    else:
        assert reconnects and all(r.data["reason"] == "max_lifetime" for r in reconnects), every
        assert seen["connectionErrors"] == ["reconnecting"] * len(reconnects), seen["connectionErrors"]
    assert errors == [], errors  # no CORS complaint, nor any failed load
    print(f"cross-origin EventSource: {len(every)} events, {len(reconnects)} reconnects, "
          f"{time.monotonic() - started:.1f}s")


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_a_page_of_an_origin_not_allowed_cannot_read_the_api(chromium: str,
                                                                  start_service: Callable[..., Live]) -> None:
    with PageServer() as allowed, PageServer() as stranger:
        live = await asyncio.to_thread(start_service, CORS_ORIGINS=allowed.origin)
        key = live.headers["X-API-Key"]
        async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=10) as api:
            queued = await api.post("/api/v1/agents/echo/invoke-async", json={"message": "mine"})
            task_id = queued.json()["task_id"]
            token = (await api.post(f"{TASKS}/{task_id}/stream-token")).json()["token"]
            async with Browser.launch(chromium) as page:
                await page.navigate(stranger.url)
                post = {"method": "POST", "headers": {"X-API-Key": key, "Content-Type": "application/json"},
                        "body": json.dumps({"message": "from a stranger"})}
                attempts = {
                    "preflighted POST": (f"{live.base}/api/v1/agents/echo/invoke-async", post),
                    "GET with a key": (f"{live.base}{TASKS}", {"headers": {"X-API-Key": key}}),
                    "simple GET": (f"{live.base}/health/live", {}),
                }
                for what, (url, init) in attempts.items():
                    outcome = await page.evaluate(f"tryFetch({js(url)}, {js(init)})")
                    assert outcome.startswith("TypeError"), (what, outcome)
                await page.evaluate(f"followUrl({js(f'{live.base}{TASKS}/{task_id}/events?token={token}')})")
                await page.wait_for("window.__follow.closed", timeout=10)
                assert await page.evaluate("window.__follow.events") == []
                errors = list(page.errors)
            # the preflight refused the POST before it was sent: the stranger queued nothing
            listed = (await api.get(TASKS)).json()["items"]
            assert [t["task_id"] for t in listed] == [task_id]
    assert len(cors_complaints(errors)) >= len(attempts) + 1, errors  # and Chromium says why: the CORS policy
