"""Admin jobs API: queue depth, workers with heartbeats and counters, throughput, failures, retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_service.config import Settings
from tests.support.apps import Client, add_user
from tests.support.tasks import finished, status, submit
from tests.support.waiting import wait_for

Start = Callable[[Settings], Any]


async def test_overview_and_retry(client: Client, settings: Settings, start_worker: Start) -> None:
    admin = {"X-API-Key": await add_user(client.app, "admin@example.com", admin=True)}
    assert (await client.get("/api/v1/jobs")).status_code == 403  # ordinary user
    queued = await submit(client, {"message": "cancel me"})
    await client.post(f"/api/v1/agents/tasks/{queued}/cancel")
    await submit(client, {"message": "later"})
    await submit(client, {"message": "deferred"})
    view = (await client.get("/api/v1/jobs", headers=admin)).json()
    # the two tasks, and the webhook pass the web process queued for the cancelled task's event
    # (webhooks/jobs.py Waker: no worker is up to hear it otherwise)
    assert view["queue"]["queued"] == 3 and view["workers"] == []

    await start_worker(settings)
    ok = await submit(client, {"message": "fine"})
    bad = await submit(client, {"message": "x", "metadata": {"fail": "permanent"}})
    await finished(client, ok)
    await finished(client, bad)

    async def worker_counted() -> dict[str, Any] | None:
        v = (await client.get("/api/v1/jobs", headers=admin)).json()
        w = v["workers"]
        return v if w and w[0]["jobs_failed"] == 1 and w[0]["jobs_succeeded"] >= 3 else None

    view = await wait_for(worker_counted, timeout=10)
    assert view["queue"] == {"queued": 0, "deferred": 0, "in_progress": 0, "retrying": 0}
    assert [f["task_id"] for f in view["recent_failures"]] == [bad]
    assert view["recent_failures"][0]["error"] == "echo: simulated permanent failure"
    assert sum(m["completed"] for m in view["throughput"]) == 3
    assert sum(m["failed"] for m in view["throughput"]) == 1
    assert sum(m["cancelled"] for m in view["throughput"]) == 1
    assert len(view["throughput"]) == view["window_minutes"] == 15

    # retry: a cancelled task runs under the same id; a finished one cannot be retried
    resp = await client.post(f"/api/v1/jobs/{queued}/retry", headers=admin)
    assert resp.status_code == 202 and resp.json()["state"] in ("PENDING", "STARTED", "SUCCESS")
    s = await finished(client, queued)
    assert s["state"] == "SUCCESS" and s["result"]["content"] == "cancel me" and s["tries"] == 1
    listed = {t["task_id"]: t for t in (await client.get("/api/v1/agents/tasks", params={"limit": 50})).json()["items"]}
    # one progress function: the list and the detail agree, for a failed task too (as far as it got)
    detail_bad = (await client.get(f"/api/v1/agents/tasks/{bad}")).json()
    assert listed[queued]["progress"] == 100 and listed[bad]["progress"] == detail_bad["progress"] == 40
    again = await client.post(f"/api/v1/jobs/{ok}/retry", headers=admin)
    assert again.status_code == 409 and again.json()["code"] == "task_not_retryable"
    assert (await client.post("/api/v1/jobs/nope/retry", headers=admin)).status_code == 404
    resp = await client.post(f"/api/v1/jobs/{bad}/retry", headers=admin)
    assert resp.status_code == 202
    s = await finished(client, bad)
    assert s["state"] == "FAILURE" and (await status(client, bad))["tries"] == 1
