"""Priority, scheduled runs and idempotent submissions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agent_service.config import Settings
from tests.support.apps import Client, add_user, app_client
from tests.support.tasks import finished, status, submit

Start = Callable[..., Any]
URL = "/api/v1/agents/echo/invoke-async"


async def test_high_priority_job_behind_200_normal_starts_first(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    normal = await asyncio.gather(*(submit(client, {"message": f"n{i}"}) for i in range(200)))
    low = await submit(client, {"message": "low", "priority": "low"})
    high = await submit(client, {"message": "urgent", "priority": "high"})
    await start_worker(make_settings(worker_max_jobs=1))
    await finished(client, high)
    first_normal = await finished(client, normal[0], timeout=30)
    assert (await status(client, high))["started_at"] < first_normal["started_at"]
    await finished(client, low, timeout=60)
    last_normal = await status(client, normal[-1])
    assert last_normal["started_at"] < (await status(client, low))["started_at"]


async def test_delay_seconds_runs_at_its_time(client: Client, settings: Settings, start_worker: Start) -> None:
    await start_worker(settings)
    resp = await client.post(URL, json={"message": "later", "delay_seconds": 1.5})
    body = resp.json()
    assert resp.status_code == 202 and body["scheduled_for"]
    s = await status(client, body["task_id"])
    assert s["state"] == "PENDING" and s["status"] == "queued" and s["scheduled_for"] == body["scheduled_for"]
    s = await finished(client, body["task_id"])
    lag = datetime.fromisoformat(s["started_at"]) - datetime.fromisoformat(body["scheduled_for"])
    assert timedelta(0) <= lag < timedelta(seconds=1)


async def test_run_at_runs_at_its_time(client: Client, settings: Settings, start_worker: Start) -> None:
    await start_worker(settings)
    when = datetime.now(UTC) + timedelta(seconds=1.2)
    body = (await client.post(URL, json={"message": "at", "run_at": when.isoformat()})).json()
    s = await finished(client, body["task_id"])
    lag = datetime.fromisoformat(s["started_at"]) - when
    assert timedelta(0) <= lag < timedelta(seconds=1)


async def test_bad_schedules_are_422(client: Client) -> None:
    far = (datetime.now(UTC) + timedelta(days=8)).isoformat()
    cases = [
        ({"message": "x", "run_at": far}, "$.run_at"),
        ({"message": "x", "run_at": "2030-01-01T00:00:00"}, "$.run_at"),
        ({"message": "x", "run_at": "tomorrow"}, "$.run_at"),
        ({"message": "x", "delay_seconds": -1}, "$.delay_seconds"),
        ({"message": "x", "delay_seconds": 604801}, "$.delay_seconds"),
        ({"message": "x", "delay_seconds": 5, "run_at": datetime.now(UTC).isoformat()}, "$.delay_seconds"),
        ({"message": "x", "priority": "urgent"}, "$.priority"),
    ]
    for body, path in cases:
        resp = await client.post(URL, json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert [e["path"] for e in resp.json()["errors"]] == [path], body


async def test_idempotency_key_replays_and_conflicts(client: Client, make_settings) -> None:  # type: ignore[no-untyped-def]
    h = {"Idempotency-Key": "order-42"}
    first = await client.post(URL, json={"message": "once"}, headers=h)
    again = await client.post(URL, json={"message": "once"}, headers=h)
    assert first.status_code == again.status_code == 202
    assert again.json()["task_id"] == first.json()["task_id"] and again.headers["idempotent-replayed"] == "true"
    other = await client.post(URL, json={"message": "different"}, headers=h)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    # another principal's identical key is independent
    key = await add_user(client.app, "stranger@example.com")
    theirs = await client.post(URL, json={"message": "once"}, headers={**h, "X-API-Key": key})
    assert theirs.status_code == 202 and theirs.json()["task_id"] != first.json()["task_id"]
    # a second web app (its own connections) on the same Redis and database sees the same key
    async with app_client(make_settings(), authenticated=False) as second:
        second.headers["X-API-Key"] = client.headers["X-API-Key"]
        replay = await second.post(URL, json={"message": "once"}, headers=h)
        assert replay.json()["task_id"] == first.json()["task_id"]
    page = (await client.get("/api/v1/agents/tasks")).json()
    assert len(page["items"]) == 1


async def test_concurrent_duplicates_queue_exactly_one_task(client: Client) -> None:
    h = {"Idempotency-Key": "burst-1"}
    results = await asyncio.gather(*(client.post(URL, json={"message": "same"}, headers=h) for _ in range(10)))
    assert {r.status_code for r in results} == {202}
    assert len({r.json()["task_id"] for r in results}) == 1
    assert len((await client.get("/api/v1/agents/tasks")).json()["items"]) == 1


async def test_bad_idempotency_key_is_422(client: Client) -> None:
    for bad in ("", "x" * 256, "has space"):
        resp = await client.post(URL, json={"message": "x"}, headers={"Idempotency-Key": bad})
        assert resp.status_code == 422 and resp.json()["errors"][0]["path"] == "header.Idempotency-Key"
