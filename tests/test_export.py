"""GET /api/v1/agents/tasks/export: the caller's tasks with their results as JSON lines or CSV,
streamed in constant memory (a real uvicorn's RSS, and tracemalloc in process), every row once,
filters, ownership (another user's tasks never; an admin's `owner=`), the audit entry, limits, and a
Redis that cannot be read answered with a 503 before the body starts."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from agent_service.kit.deps import Deps, open_deps
from agent_service.tasks import export, lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks.schemas import ExportQuery, JobResult
from tests.support.apps import Client, add_user, app_client
from tests.support.identity import ME
from tests.support.problems import assert_problem
from tests.support.processes import E2E_EMAIL, Live, Process, bootstrap_user
from tests.support.waiting import wait_for, wait_http_ok

EXPORT = "/api/v1/agents/tasks/export"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TRICKY = '=SUM(A1), "quoted"\nsecond line; ünïcödé'


async def user_id(client: Client, key: str | None = None) -> str:
    resp = await client.get(ME, headers={"X-API-Key": key} if key else None)
    return str(resp.json()["user_id"])


async def insert(deps: Deps, owner: str | None, n: int, *, start: datetime = T0, step: timedelta = timedelta(seconds=1),
                 state: str = "SUCCESS", agent: str = "echo", message: str = "hello", result: str | None = "answer",
                 ties: int = 1) -> list[str]:
    """`n` task rows straight through the repository (one transaction), `ties` of them per instant,
    newest last; SUCCESS ones get a kept result in Redis whose content is `result`."""
    ids = [uuid.uuid4().hex for _ in range(n)]
    async with deps.db.transaction() as tx:
        for i, task_id in enumerate(ids):
            payload = json.dumps({"task_id": task_id, "agent_id": agent, "message": message, "stream": False})
            await task_store.create(tx, task_id=task_id, kind="invoke", agent_id=agent, owner_id=owner,  # type: ignore[arg-type]
                                    request_id=None, session_id=None, now=start + step * (i // ties), payload=payload)
        if state != "PENDING":
            await tx.executemany("UPDATE tasks SET state = ?, tries = 1, completed_at = created_at WHERE id = ?",
                                 [(state, t) for t in ids])
    if result is not None and state in ("SUCCESS", "REVOKED"):
        live = lifecycle.live(deps)
        for first in range(0, n, 1000):
            pipe = deps.redis.pipeline(transaction=False)
            for task_id in ids[first:first + 1000]:
                body = JobResult(content=result, metadata={"n": 1}, agent_id=agent, session_id=None, started_at=start,
                                 completed_at=start)
                pipe.set(live.result_key(task_id), msgspec.json.encode(body), ex=600)
            await pipe.execute()
    return ids


def newest_first(ids: list[str], ties: int = 1) -> list[str]:
    """`insert`'s ids in the export's order: newest instant first, and inside one instant by id, descending."""
    groups = [ids[k:k + ties] for k in range(0, len(ids), ties)]
    return [task_id for group in reversed(groups) for task_id in sorted(group, reverse=True)]


def lines(body: str) -> list[dict[str, Any]]:
    assert body.endswith("\n") or body == ""
    return [json.loads(line) for line in body.splitlines()]


def rows(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body, newline="")))


async def test_every_row_once_newest_first_in_jsonl_and_csv(client: Client) -> None:
    deps, me = client.app.state.deps, await user_id(client)
    # 1 150 rows over 5 reads of 250, with 7 rows sharing each instant: page ends fall inside ties
    mine = await insert(deps, me, 1150, ties=7, message=TRICKY, result=TRICKY)
    pending = await insert(deps, me, 3, start=T0 - timedelta(days=1), state="PENDING")
    other = await add_user(client.app, "other@example.com")
    await insert(deps, await user_id(client, other), 20)

    resp = await client.get(EXPORT)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-ndjson"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert resp.headers["content-disposition"] == f'attachment; filename="tasks-{today}.jsonl"'
    assert resp.headers["cache-control"] == "no-store" and "ratelimit-remaining" in resp.headers
    got = lines(resp.text)
    assert [r["task_id"] for r in got] == newest_first(mine, 7) + newest_first(pending), "each once, newest first"
    first = got[0]
    assert first["owner_id"] == me and first["state"] == "SUCCESS" and first["status"] == "completed"
    assert first["message"] == TRICKY and first["result"]["content"] == TRICKY and "chunks" not in first["result"]
    assert first["result"]["type"] == "agent" and first["created_at"].endswith("Z")
    assert {r["result"] is None for r in got[-3:]} == {True} and got[-1]["state"] == "PENDING"
    assert set(first) == set(export.CSV_COLUMNS) - {"result_content"}  # no payload, no webhook secret

    resp = await client.get(EXPORT, params={"format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == f'attachment; filename="tasks-{today}.csv"'
    assert resp.text.split("\r\n", 1)[0] == ",".join(export.CSV_COLUMNS)
    table = rows(resp.text)
    assert [r["task_id"] for r in table] == [r["task_id"] for r in got]
    # quoting round-trips commas, quotes and newlines; a formula-looking cell is defused with a '
    assert table[0]["message"] == "'" + TRICKY and table[0]["result_content"] == "'" + TRICKY
    assert json.loads(table[0]["result"]) == first["result"] and table[0]["tries"] == "1"
    assert table[-1]["result"] == "" and table[-1]["completed_at"] == ""


async def test_filters(client: Client) -> None:
    deps, me = client.app.state.deps, await user_id(client)
    done = await insert(deps, me, 10)  # T0 … T0+9 s
    failed = await insert(deps, me, 4, start=T0 + timedelta(minutes=1), state="FAILURE", agent="other")

    async def ids(**params: str) -> list[str]:
        resp = await client.get(EXPORT, params=params)
        assert resp.status_code == 200, resp.text
        return [r["task_id"] for r in lines(resp.text)]

    assert await ids(state="FAILURE") == list(reversed(failed))
    assert await ids(agent_id="echo") == list(reversed(done))
    assert await ids(agent_id="other", state="SUCCESS") == []
    assert await ids(since=(T0 + timedelta(seconds=3)).isoformat(), until=(T0 + timedelta(seconds=6)).isoformat()) \
        == list(reversed(done[3:6])), "since inclusive, until exclusive"
    assert await ids(since="2026-03-01T13:01:00+01:00") == list(reversed(failed)), "any offset"
    as_csv = await client.get(EXPORT, params={"format": "csv", "state": "FAILURE"})
    assert [r["task_id"] for r in rows(as_csv.text)] == list(reversed(failed))
    for bad in ({"since": "2026-03-01"}, {"since": "2026-03-01T12:00:00"}, {"until": "1772366400"},
                {"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, {"format": "xml"},
                {"state": "DONE"}, {"agent_id": "x" * 65}, {"bogus": "1"}, {"until": "null"}):
        assert_problem(await client.get(EXPORT, params=bad), 422)


async def test_other_users_tasks_are_never_exported_and_an_admin_chooses(client: Client) -> None:
    deps = client.app.state.deps
    alice = await user_id(client)
    bob_key = await add_user(client.app, "bob@example.com")
    bob = await user_id(client, bob_key)
    admin = {"X-API-Key": await add_user(client.app, "admin@example.com", admin=True)}
    alices, bobs = await insert(deps, alice, 5), await insert(deps, bob, 3, start=T0 + timedelta(hours=1))

    assert {r["task_id"] for r in lines((await client.get(EXPORT)).text)} == set(alices)
    assert {r["task_id"] for r in lines((await client.get(EXPORT, headers={"X-API-Key": bob_key})).text)} == set(bobs)
    assert_problem(await client.get(EXPORT, params={"owner": bob}), 403, "insufficient_scope")
    everyone = lines((await client.get(EXPORT, headers=admin)).text)
    assert [r["task_id"] for r in everyone] == list(reversed(bobs)) + list(reversed(alices))
    only_bob = await client.get(EXPORT, params={"owner": bob, "format": "csv"}, headers=admin)
    assert [r["task_id"] for r in rows(only_bob.text)] == list(reversed(bobs))
    reader = await add_user(client.app, "invoker@example.com", scopes=("agents:invoke",))
    assert_problem(await client.get(EXPORT, headers={"X-API-Key": reader}), 403, "insufficient_scope")


async def test_each_export_is_audited_with_what_it_sent(client: Client) -> None:
    deps, me = client.app.state.deps, await user_id(client)
    await insert(deps, me, 300)
    assert (await client.get(EXPORT, params={"format": "csv", "state": "SUCCESS"})).status_code == 200
    admin = {"X-API-Key": await add_user(client.app, "auditor@example.com", admin=True)}

    async def entry() -> dict[str, Any] | None:
        items = (await client.get("/api/v1/audit-logs", params={"action": "EXPORT"}, headers=admin)).json()["items"]
        return items[0] if items else None

    found = await wait_for(entry, timeout=10)
    assert found["actor_user_id"] == me and found["resource_type"] == "task" and found["status"] == 200
    assert found["metadata"] == {"format": "csv", "filters": {"state": "SUCCESS"}, "rows": 300, "complete": True}


async def test_exports_are_rate_limited_like_reads(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(rate_limit_free=2)) as client:
        assert [(await client.get(EXPORT)).status_code for _ in range(2)] == [200, 200]
        limited = await client.get(EXPORT)
        assert_problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1


@pytest.mark.sqlite_only  # tracemalloc sees this process's Python allocations, whatever the store
async def test_the_service_holds_one_page_however_many_tasks(client: Client) -> None:
    deps, me = client.app.state.deps, await user_id(client)
    await insert(deps, me, 10_000, message="m" * 600, result="r" * 1200)
    sent = count = 0
    tracemalloc.start()
    try:
        opened = await export.open_export(deps, ExportQuery(), owner_id=me, is_admin=False)
        async for chunk in opened.chunks():
            sent += len(chunk)
            count += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000 and opened.rows == 10_000 and opened.complete
    assert sent > 20_000_000
    print(f"tracemalloc peak {peak / 1e6:.1f} MB for {sent / 1e6:.0f} MB sent")
    assert peak < 6_000_000, f"peak {peak / 1e6:.1f} MB of Python allocations for {sent / 1e6:.0f} MB sent"


# ---------------------------------------------------------------- a real uvicorn

def rss_kb(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


@pytest.mark.e2e
@pytest.mark.sqlite_only  # the web process's memory, not the store, is under test
@pytest.mark.timeout(240)
async def test_ten_thousand_tasks_stream_from_uvicorn_in_constant_memory(
        env: dict[str, str], make_settings: Callable[..., Settings], spawn: Callable[..., Process]) -> None:
    api_key = await asyncio.to_thread(bootstrap_user, env)
    deps = await open_deps(make_settings())
    try:
        me = await owner_of(deps, E2E_EMAIL)
        warm = await insert(deps, me, 250, start=T0 - timedelta(days=1), message="w" * 600, result="w" * 1200)
        big = await insert(deps, me, 10_000, message="m" * 600, result="r" * 1200)
    finally:
        await deps.aclose()
    port = free_port()
    web = spawn("web", env, PORT=str(port))
    live = Live(f"http://127.0.0.1:{port}", web, web, api_key)
    wait_http_ok(f"{live.base}/health/live", on_fail=lambda: web.output()[-3000:])
    async with httpx.AsyncClient(base_url=live.base, headers=live.headers, timeout=httpx.Timeout(30)) as api:
        async def read_all(**params: str) -> tuple[list[str], int]:
            ids: list[str] = []
            size = 0
            async with api.stream("GET", EXPORT, params=params) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    size += len(line) + 1
                    ids.append(json.loads(line)["task_id"])
            return ids, size

        # warm up: the code paths, the pools, one page of each kind
        assert (await read_all(until=T0.isoformat()))[0] == list(reversed(warm))
        before = rss_kb(web.proc.pid)
        ids, size = await read_all(since=T0.isoformat())
        after = rss_kb(web.proc.pid)
    assert ids == list(reversed(big)) and size > 20_000_000
    grew_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(f"export of {len(ids)} tasks, {size / 1e6:.0f} MB: RSS {before['VmRSS'] / 1024:.0f} MB before, "
          f"peak {after['VmHWM'] / 1024:.0f} MB, {after['VmRSS'] / 1024:.0f} MB after")
    assert grew_mb < 12, f"the web process grew by {grew_mb:.0f} MB to send {size / 1e6:.0f} MB"


async def owner_of(deps: Deps, email: str) -> str:
    """A user's id, read from the store (no web process is up yet)."""
    row = await deps.db.fetchone("SELECT id FROM users WHERE email = ?", (email,))
    assert row is not None
    return str(row[0])


async def test_results_unreadable_at_the_start_is_a_503_before_any_byte(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings()) as client:
        await insert(client.app.state.deps, await user_id(client), 3)
        key = client.headers["X-API-Key"]
    # the same database, and a Redis that is not there
    async with app_client(make_settings(redis_url="redis://127.0.0.1:9/0", rate_limit_enabled=False),
                          authenticated=False) as client:
        resp = await client.get(EXPORT, headers={"X-API-Key": key})
        assert_problem(resp, 503, "queue_unavailable")
        assert resp.headers["retry-after"] and "content-disposition" not in resp.headers
