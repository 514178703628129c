"""Queued agent tasks through the in-process app: submit one, read its status, wait for it to finish."""

from __future__ import annotations

from typing import Any

from tests.support.apps import Client
from tests.support.waiting import wait_for


async def submit(client: Client, body: dict[str, Any], agent: str = "echo") -> str:
    resp = await client.post(f"/api/v1/agents/{agent}/invoke-async", json=body)
    assert resp.status_code == 202, resp.text
    data = resp.json()
    assert data["status"] == "queued" and resp.headers["location"] == data["status_url"]
    return str(data["task_id"])


async def status(client: Client, task_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/agents/tasks/{task_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def finished(client: Client, task_id: str, timeout: float = 15) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        s = await status(client, task_id)
        return s if s["state"] in ("SUCCESS", "FAILURE", "REVOKED") else None

    return await wait_for(done, timeout=timeout)  # type: ignore[no-any-return]
