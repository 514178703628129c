"""Cancel, list and live events of tasks, with a real worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from agent_service.config import Settings
from tests.support.apps import Client, add_user, app_client
from tests.support.tasks import finished, status, submit
from tests.support.waiting import wait_for

Start = Callable[[Settings], Any]


async def test_cancel_queued_task_never_starts(client: Client, settings: Settings, start_worker: Start) -> None:
    task_id = await submit(client, {"message": "never"})
    resp = await client.post(f"/api/v1/agents/tasks/{task_id}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "REVOKED" and resp.json()["status"] == "cancelled"
    other = await submit(client, {"message": "after"})  # proves the worker ran and passed our task by
    await start_worker(settings)
    await finished(client, other)
    s = await status(client, task_id)
    assert (s["state"], s["tries"], s["started_at"]) == ("REVOKED", 0, None)


async def test_cancel_deferred_retry_never_runs_again(client: Client, make_settings, start_worker: Start) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(job_retry_backoff_base=30, job_retry_backoff_max=60)
    await start_worker(settings)
    client.app.state.deps.rng = lambda: 1.0
    task_id = await submit(client, {"message": "x", "metadata": {"fail": "transient"}})
    await wait_for(lambda: _state_is(client, task_id, "RETRY"))
    resp = await client.post(f"/api/v1/agents/tasks/{task_id}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "REVOKED" and resp.json()["tries"] == 1


async def _state_is(client: Client, task_id: str, state: str) -> bool:
    return (await status(client, task_id))["state"] == state


async def test_cancel_running_invoke_stops_within_a_second(client: Client, settings: Settings, start_worker: Start):
    await start_worker(settings)
    task_id = await submit(client, {"message": "a b c d e f g h", "metadata": {"delay": 1}})
    await wait_for(lambda: _state_is(client, task_id, "STARTED"))
    t0 = time.monotonic()
    resp = await client.post(f"/api/v1/agents/tasks/{task_id}/cancel")
    assert resp.status_code in (200, 202)
    s = await finished(client, task_id)
    assert s["state"] == "REVOKED" and time.monotonic() - t0 < 1.0
    assert s["error"] == "Cancelled by request."


async def test_cancel_running_stream_keeps_partial_output(client: Client, settings: Settings, start_worker: Start):
    await start_worker(settings)
    words = " ".join(f"w{i}" for i in range(100))
    task_id = await submit(client, {"message": words, "stream": True, "metadata": {"delay": 0.05}})
    await wait_for(lambda: _progressed(client, task_id))
    await client.post(f"/api/v1/agents/tasks/{task_id}/cancel")
    s = await finished(client, task_id)
    assert s["state"] == "REVOKED"
    result = s["result"]
    assert result["incomplete"] is True and 0 < len(result["chunks"]) < 100
    assert result["content"] == "".join(result["chunks"]) and words.startswith(result["content"])


async def _progressed(client: Client, task_id: str) -> bool:
    s = await status(client, task_id)
    return s["state"] == "STARTED" and s["progress"] > 40


async def test_cancel_finished_task_is_409_and_foreign_task_is_404(client: Client, settings: Settings,
                                                                    start_worker: Start) -> None:
    await start_worker(settings)
    task_id = await submit(client, {"message": "done"})
    await finished(client, task_id)
    resp = await client.post(f"/api/v1/agents/tasks/{task_id}/cancel")
    assert resp.status_code == 409 and resp.json()["code"] == "task_finished"
    other_key = await add_user(client.app, "other@example.com")
    resp = await client.post(f"/api/v1/agents/tasks/{task_id}/cancel", headers={"X-API-Key": other_key})
    assert resp.status_code == 404


async def test_list_is_mine_newest_first_filtered_and_paginated(client: Client, settings: Settings) -> None:
    ids = [await submit(client, {"message": f"m{i}"}) for i in range(5)]
    other_key = await add_user(client.app, "someone@example.com")
    await client.post("/api/v1/agents/echo/invoke-async", json={"message": "theirs"}, headers={"X-API-Key": other_key})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/agents/tasks", params=params)).json()
        seen += [t["task_id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    assert (await client.get("/api/v1/agents/tasks", params={"state": "SUCCESS"})).json()["items"] == []
    bad = await client.get("/api/v1/agents/tasks", params={"state": "NOPE", "limit": 0, "cursor": "%%%"})
    assert bad.status_code == 422 and {e["path"] for e in bad.json()["errors"]} >= {"query.state", "query.limit"}
    assert (await client.get("/api/v1/agents/tasks", params={"cursor": "garbage"})).status_code == 422
    assert (await client.get("/api/v1/agents/tasks", params={"owner": "x"})).status_code == 403
    admin_key = await add_user(client.app, "root@example.com", admin=True)
    everyone = (await client.get("/api/v1/agents/tasks", params={"limit": 100},
                                 headers={"X-API-Key": admin_key})).json()["items"]
    assert len(everyone) == 6


def _parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            k, _, v = line.partition(": ")
            fields[k] = v
        if "event" in fields:
            events.append(fields)
    return events


async def test_events_stream_history_resume_and_late_join(make_settings, start_worker: Start) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    await start_worker(settings)
    async with app_client(settings) as client:
        words = " ".join(f"w{i}" for i in range(25))
        task_id = await submit(client, {"message": words, "stream": True, "metadata": {"delay": 0.02}})
        url = f"/api/v1/agents/tasks/{task_id}/events"
        async with client.stream("GET", url) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            full = _parse_sse((await resp.aread()).decode())
        types = [e["event"] for e in full]
        assert types[0] == "state" and '"PENDING"' in full[0]["data"]
        assert types.count("chunk") == 25 and '"SUCCESS"' in full[-1]["data"]
        ids = [e["id"] for e in full]
        assert len(set(ids)) == len(ids) and all(ids)
        # resume mid-way: exactly the remainder, no loss, no duplicate
        mid = len(full) // 2
        async with client.stream("GET", url, headers={"Last-Event-ID": ids[mid]}) as resp:
            rest = _parse_sse((await resp.aread()).decode())
        assert [e["id"] for e in rest] == ids[mid + 1:]
        # after the end: a reconnect with the last id ends at once with a final state
        async with client.stream("GET", url, headers={"Last-Event-ID": ids[-1]}) as resp:
            tail = _parse_sse((await resp.aread()).decode())
        assert len(tail) == 1 and '"final":true' in tail[0]["data"]
        for nonsense in ("nonsense", "0-20000000000000000000", "99999999999999999999-0"):
            bad = await client.get(url, headers={"Last-Event-ID": nonsense})
            assert bad.status_code == 422, nonsense
        other_key = await add_user(client.app, "peeker@example.com")
        assert (await client.get(url, headers={"X-API-Key": other_key})).status_code == 404


async def test_events_of_live_task_arrive_without_polling(make_settings, start_worker: Start) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    async with app_client(settings) as client:
        task_id = await submit(client, {"message": "one two three", "stream": True, "metadata": {"delay": 0.1}})
        await start_worker(settings)
        got: list[str] = []
        async with client.stream("GET", f"/api/v1/agents/tasks/{task_id}/events",
                                 timeout=httpx.Timeout(10)) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    got.append(line[7:])
        assert got.count("chunk") == 3 and got[-1] == "state"
