"""Batches end to end: the app in process, real arq workers, a receiver on 127.0.0.1 verifying
`batch.completed` with `standardwebhooks`. Both SQL backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from agent_service.agents.schemas import InvokeAsyncRequest
from agent_service.config import Settings
from agent_service.errors import ServiceUnavailable
from agent_service.kit.deps import Deps
from agent_service.tasks import batch_lifecycle, batches
from agent_service.tasks.batch_schemas import BatchRequest
from agent_service.tasks.queue import JobQueue
from agent_service.webhooks import dispatch
from agent_service.webhooks import repository as webhook_store
from tests.support.apps import Client, add_user, app_client
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import Receiver, running_receiver

Start = Callable[..., Any]


@pytest.fixture
def hook_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(webhook_allow_private_networks=True, webhook_timeout=2.0, webhook_poll_seconds=1)


@pytest.fixture
async def api(hook_settings: Settings) -> AsyncIterator[Client]:
    async with app_client(hook_settings) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def deps_of(api: Client) -> Deps:
    return api.app.state.deps  # type: ignore[no-any-return]


async def task_rows(api: Client) -> int:
    row = await deps_of(api).db.fetchone("SELECT COUNT(*) FROM tasks")
    return int(row[0]) if row else 0


async def queued(api: Client) -> int:
    """Task jobs in the queue, due or deferred (the webhooks' wake-up job aside)."""
    deps = deps_of(api)
    return sum(b":" not in m for m in await deps.redis.zrange(deps.settings.queue_name, 0, -1))


async def batch_when(api: Client, batch_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        resp = await api.get(f"/api/v1/batches/{batch_id}")
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.json()["state"] == state else None  # type: ignore[no-any-return]

    return await wait_for(reached, timeout=timeout)  # type: ignore[no-any-return]


async def test_one_bad_item_refuses_the_batch_and_queues_nothing(api: Client) -> None:
    before = (await task_rows(api), await queued(api))
    items: list[dict[str, Any]] = [{"message": f"item {i}"} for i in range(200)]
    items[137] = {"message": "bad", "metadata": {"fail": "sometimes"}}  # echo's own check refuses it
    resp = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items})
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["errors"][0]["path"] == "$.items[137].metadata" and "items[137]" in problem["detail"]
    items[137] = {"message": ""}  # the schema refuses this one
    resp = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items})
    assert resp.status_code == 422 and resp.json()["errors"][0]["path"].startswith("$.items[137].message")
    items[137] = {"message": "later", "run_at": "2020-01-01T00:00:00"}  # no time zone: as invoke-async says
    resp = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items})
    assert resp.status_code == 422 and resp.json()["errors"][0]["path"] == "$.items[137].run_at"
    assert (await task_rows(api), await queued(api)) == before
    assert (await api.get("/api/v1/batches")).json()["items"] == []
    resp = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": []})
    assert resp.status_code == 422
    resp = await api.post("/api/v1/agents/nobody/invoke-batch", json={"items": [{"message": "x"}]})
    assert resp.status_code == 404


async def test_a_batch_completes_and_batch_completed_is_sent_once(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await api.post("/api/v1/webhooks", json={"url": receiver.url + "?sub", "events": ["batch.completed"]})
    assert sub.status_code == 201, sub.text
    receiver.secrets.append(sub.json()["secret"])
    items = [{"message": f"hello {i}"} for i in range(50)]
    resp = await api.post("/api/v1/agents/echo/invoke-batch",
                          json={"items": items, "webhook": {"url": receiver.url + "?own"}})
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    receiver.secrets.append(accepted["webhook_secret"])
    assert len(accepted["task_ids"]) == 50 and resp.headers["location"] == accepted["status_url"]
    assert accepted["status_url"] == f"/api/v1/batches/{accepted['batch_id']}"
    for _ in range(2):  # two workers: the last tasks' events may be seen by either
        await start_worker(hook_settings)
    done = await batch_when(api, accepted["batch_id"], "completed")
    assert (done["size"], done["finished"], done["progress"], done["counts"]["SUCCESS"]) == (50, 50, 100, 50)
    assert done["completed_at"] is not None
    first = await api.get(f"/api/v1/agents/tasks/{accepted['task_ids'][7]}")
    assert first.json()["result"]["content"] == "hello 7"
    await wait_for(lambda: {r.path for r in receiver.received} == {"/hook?sub", "/hook?own"}, timeout=15)
    by_path = {r.path: r for r in receiver.received}
    assert by_path["/hook?own"].verified_by == [accepted["webhook_secret"]]
    assert by_path["/hook?sub"].verified_by == [sub.json()["secret"]]
    for r in receiver.received:
        assert r.body["type"] == "batch.completed" and r.body["data"]["batch_id"] == accepted["batch_id"]
        assert r.body["data"]["state"] == "completed" and r.body["data"]["counts"]["SUCCESS"] == 50
    # every task's event saw the batch at its end at most once more: seeing it again (another
    # worker, a re-run pass) writes nothing new
    deps = deps_of(api)
    owner = (await api.get("/api/v1/auth/me")).json()["user_id"]
    again = await asyncio.gather(*(dispatch._batch_completed(deps, owner, accepted["batch_id"]) for _ in range(4)))
    await asyncio.gather(*(webhook_store.add_deliveries(deps.db, made) for made in again))
    rows = await deps.db.fetchall("SELECT id FROM webhook_deliveries WHERE event = 'batch.completed'")
    assert sorted(r[0] for r in rows) == sorted(receiver.ids())
    assert len(receiver.received) == 2


async def test_cancel_stops_every_unfinished_task_and_is_idempotent(api: Client) -> None:
    items = [{"message": f"later {i}", "delay_seconds": 3600} for i in range(20)]
    accepted = (await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items})).json()
    status = (await api.get(accepted["status_url"])).json()
    assert (status["state"], status["counts"]["PENDING"], status["progress"]) == ("running", 20, 0)
    resp = await api.post(f"/api/v1/batches/{accepted['batch_id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["state"], resp.json()["counts"]["REVOKED"], resp.json()["finished"]) == ("cancelled", 20, 20)
    cancelled_at = resp.json()["cancelled_at"]
    again = await api.post(f"/api/v1/batches/{accepted['batch_id']}/cancel")
    assert again.status_code == 200 and again.json()["cancelled_at"] == cancelled_at
    task = (await api.get(f"/api/v1/agents/tasks/{accepted['task_ids'][0]}")).json()
    assert task["state"] == "REVOKED"
    assert await queued(api) == 0


async def test_someone_elses_batch_is_not_found_and_lists_are_mine(api: Client) -> None:
    accepted = (await api.post("/api/v1/agents/echo/invoke-batch",
                               json={"items": [{"message": "a", "delay_seconds": 600}]})).json()
    other = await add_user(api.app, "other-batcher@example.com")
    for method, path in (("GET", ""), ("POST", "/cancel")):
        resp = await api.request(method, f"/api/v1/batches/{accepted['batch_id']}{path}", headers={"X-API-Key": other})
        assert resp.status_code == 404 and resp.json()["code"] == "batch_not_found"
    assert (await api.get("/api/v1/batches", headers={"X-API-Key": other})).json()["items"] == []
    second = (await api.post("/api/v1/agents/echo/invoke-batch",
                             json={"items": [{"message": "b", "delay_seconds": 600}]})).json()
    page = (await api.get("/api/v1/batches?limit=1")).json()
    assert [b["batch_id"] for b in page["items"]] == [second["batch_id"]] and page["next_cursor"]
    rest = (await api.get(f"/api/v1/batches?limit=1&cursor={page['next_cursor']}")).json()
    assert [b["batch_id"] for b in rest["items"]] == [accepted["batch_id"]] and rest["next_cursor"] is None


async def test_an_idempotency_key_replays_the_batch(api: Client) -> None:
    body = {"items": [{"message": "once", "delay_seconds": 600}, {"message": "twice", "delay_seconds": 600}]}
    first = await api.post("/api/v1/agents/echo/invoke-batch", json=body, headers={"Idempotency-Key": "batch-1"})
    again = await api.post("/api/v1/agents/echo/invoke-batch", json=body, headers={"Idempotency-Key": "batch-1"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": body["items"][:1]},
                           headers={"Idempotency-Key": "batch-1"})
    assert other.status_code == 409
    assert await task_rows(api) == 2


async def test_a_batch_counts_its_items_against_the_rate_limit(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(rate_limit_free=30)) as api:
        items = [{"message": f"m{i}", "delay_seconds": 600} for i in range(20)]
        too_big = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items + items})
        assert too_big.status_code == 429 and too_big.json()["code"] == "over_rate_limit"  # never fits in 30
        key = {"Idempotency-Key": "twenty"}
        first = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items}, headers=key)
        assert first.status_code == 202
        replay = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items}, headers=key)
        assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"  # one request, not 20
        resp = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items})
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) > 0  # 1 + 20 + 1 + 20 > 30 a minute
        assert (await api.post("/api/v1/agents/echo/invoke-batch", json={"items": items[:6]})).status_code == 202
        assert await task_rows(api) == 26


async def test_over_batch_max_items_is_refused(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(batch_max_items=3)) as api:
        resp = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": [{"message": "x"}] * 4})
        assert resp.status_code == 422 and resp.json()["errors"][0]["path"] == "$.items"


class RefusingQueue(JobQueue):
    """The real queue, refusing every job after the first `allowed` (Redis gone midway)."""

    def __init__(self, deps: Deps, allowed: int) -> None:
        super().__init__(deps.redis, deps.settings)
        self.allowed = allowed

    async def enqueue(self, *args: Any, **kwargs: Any) -> bool:
        if self.allowed <= 0:
            raise ServiceUnavailable("Redis went away", code="queue_unavailable")
        self.allowed -= 1
        return await super().enqueue(*args, **kwargs)


async def test_a_queue_failing_midway_leaves_no_batch(api: Client, hook_settings: Settings, start_worker: Start,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_lifecycle, "ROUND", 5)  # two rounds are sent before the queue refuses
    deps = deps_of(api)
    owner = (await api.get("/api/v1/auth/me")).json()["user_id"]
    half = Deps(settings=deps.settings, db=deps.db, redis=deps.redis, http=deps.http, clock=deps.clock)
    refusing: JobQueue = RefusingQueue(deps, allowed=10)
    half.provide(JobQueue.of, refusing)
    body = BatchRequest(items=[InvokeAsyncRequest(message=f"part {i}") for i in range(30)])
    with pytest.raises(ServiceUnavailable):
        await batches.submit_batch(half, "echo", body, owner_id=owner, request_id=None, idempotency_key=None,
                                   tier=None, is_admin=False)
    assert await task_rows(api) == 0
    assert (await api.get("/api/v1/batches")).json()["items"] == []
    assert await queued(api) == 10  # queued before the failure: their worker finds no record
    await start_worker(hook_settings)
    await wait_for(lambda: _empty(api), timeout=15)
    assert await task_rows(api) == 0


async def _empty(api: Client) -> bool:
    return await queued(api) == 0
