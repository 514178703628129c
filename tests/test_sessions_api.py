"""Sessions through the API: history flows across sync, stream and async invocations."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from agent_service.config import Settings
from tests.support.apps import Client, add_user
from tests.support.tasks import finished, submit
from tests.support.waiting import wait_for

Start = Callable[..., Any]


async def test_history_flows_across_invocation_modes(client: Client, settings: Settings, start_worker: Start):
    await start_worker(settings)
    sid = {"session_id": "chat-1"}
    first = await client.post("/api/v1/agents/echo/invoke", json={"message": "hello", **sid})
    assert first.json()["metadata"]["history_length"] == 0
    async with client.stream("POST", "/api/v1/agents/echo/stream", json={"message": "streamed", **sid}) as r:
        await r.aread()
    task = await submit(client, {"message": "queued", **sid})
    assert (await finished(client, task))["state"] == "SUCCESS"
    last = await client.post("/api/v1/agents/echo/invoke", json={"message": "again", **sid})
    assert last.json()["metadata"]["history_length"] == 6  # three exchanges before this one
    detail = (await client.get("/api/v1/sessions/chat-1")).json()
    assert [m["content"] for m in detail["messages"]] == ["hello", "hello", "streamed", "streamed", "queued", "queued",
                                                          "again", "again"]
    assert detail["title"] == "hello" and detail["message_count"] == 8
    page = (await client.get("/api/v1/sessions")).json()
    assert [s["id"] for s in page["items"]] == ["chat-1"] and "messages" not in page["items"][0]


async def test_another_users_session_is_404_to_read_and_delete_and_their_id_is_a_new_session(
    client: Client, settings: Settings, start_worker: Start
) -> None:
    await client.post("/api/v1/agents/echo/invoke", json={"message": "mine", "session_id": "private"})
    other = {"X-API-Key": await add_user(client.app, "intruder@example.com")}
    for method in ("GET", "DELETE"):
        resp = await client.request(method, "/api/v1/sessions/private", headers=other)
        assert resp.status_code == 404 and resp.json()["code"] == "session_not_found", method
    # ids are per owner: using the same string starts the intruder's own, empty conversation
    await start_worker(settings)
    first = await client.post("/api/v1/agents/echo/invoke", json={"message": "x", "session_id": "private"},
                              headers=other)
    assert first.status_code == 200 and first.json()["metadata"]["history_length"] == 0
    async with client.stream("POST", "/api/v1/agents/echo/stream", json={"message": "y", "session_id": "private"},
                             headers=other) as r:
        assert r.status_code == 200
        await r.aread()
    queued = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "z", "session_id": "private"},
                               headers=other)
    assert queued.status_code == 202

    async def done() -> bool:
        state = (await client.get(queued.json()["status_url"], headers=other)).json()["state"]
        return state in ("SUCCESS", "FAILURE", "REVOKED")

    await wait_for(done)
    theirs = (await client.get("/api/v1/sessions/private", headers=other)).json()
    assert [m["content"] for m in theirs["messages"]] == ["x", "x", "y", "y", "z", "z"]
    mine = (await client.get("/api/v1/sessions/private")).json()
    assert [m["content"] for m in mine["messages"]] == ["mine", "mine"]


async def test_delete_and_expiry(client: Client, settings: Settings) -> None:
    await client.post("/api/v1/agents/echo/invoke", json={"message": "bye", "session_id": "short"})
    assert (await client.delete("/api/v1/sessions/short")).status_code == 204
    assert (await client.get("/api/v1/sessions/short")).status_code == 404
    await client.post("/api/v1/agents/echo/invoke", json={"message": "old", "session_id": "aging"})
    deps = client.app.state.deps
    real_clock = deps.clock
    deps.clock = lambda: real_clock() + timedelta(hours=settings.session_expiry_hours + 1)
    assert (await client.get("/api/v1/sessions/aging")).status_code == 404
    fresh = await client.post("/api/v1/agents/echo/invoke", json={"message": "new", "session_id": "aging"})
    assert fresh.json()["metadata"]["history_length"] == 0
    assert (await client.get("/api/v1/sessions", params={"cursor": "junk"})).status_code == 422
