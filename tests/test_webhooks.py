"""Webhooks end to end: the app in process, a real arq worker and a receiver on 127.0.0.1 that
verifies every signature with the `standardwebhooks` library. Time is the worker's injected clock
(deps.clock), moved by hand: the retry schedule and the day before a subscription is disabled are
checked without waiting for them. Both SQL backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent_service.config import Settings
from agent_service.errors import NotFound
from agent_service.kit.deps import Deps
from agent_service.webhooks import dispatch
from agent_service.webhooks import service as webhooks
from agent_service.webhooks.schemas import SubscriptionCreate
from tests.support.apps import Client, add_user, app_client
from tests.support.clock import FakeClock
from tests.support.tasks import finished, submit
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import Receiver, running_receiver

Start = Callable[..., Any]
SCHEDULE = [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 32400]


@pytest.fixture
def hook_settings(make_settings: Callable[..., Settings]) -> Settings:
    # the receiver is on 127.0.0.1; a held answer outlasts the 1 s timeout
    return make_settings(webhook_allow_private_networks=True, webhook_timeout=1.0, webhook_poll_seconds=1)


@pytest.fixture
async def api(hook_settings: Settings) -> AsyncIterator[Client]:
    async with app_client(hook_settings) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


async def worker_deps(start_worker: Start, settings: Settings, clock: FakeClock | None = None) -> Deps:
    """A started worker's Deps, on `clock` and with no jitter (so the schedule is exact)."""
    worker = await start_worker(settings)
    deps: Deps = await wait_for(lambda: worker.ctx.get("deps"))
    if clock is not None:
        deps.clock = clock
    deps.rng = lambda: 0.5
    return deps


async def subscribe(api: Client, receiver: Receiver, url: str | None = None, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/v1/webhooks", json={"url": url or receiver.url, **body})
    assert resp.status_code == 201, resp.text
    sub: dict[str, Any] = resp.json()
    receiver.secrets.append(sub["secret"])
    return sub


async def deliveries(api: Client, sub_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/v1/webhooks/{sub_id}/deliveries")
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def delivery_when(api: Client, sub_id: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        items = await deliveries(api, sub_id)
        return items[0] if items and check(items[0]) else None

    return await wait_for(found, timeout=15)  # type: ignore[no-any-return]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_a_task_webhook_and_a_subscription_each_get_one_signed_delivery(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver, receiver.url + "?sub", events=["task.succeeded"], description="mine")
    shown = (await api.get(f"/api/v1/webhooks/{sub['id']}")).json()
    assert "secret" not in shown and sub["secret"].startswith(shown["secret_hint"].rstrip("…"))
    resp = await api.post("/api/v1/agents/echo/invoke-async",
                          json={"message": "hello hooks", "webhook": {"url": receiver.url + "?task"}})
    assert resp.status_code == 202, resp.text
    task_id, task_secret = resp.json()["task_id"], resp.json()["webhook_secret"]
    receiver.secrets.append(task_secret)
    await worker_deps(start_worker, hook_settings)
    status = await finished(api, task_id)
    await wait_for(lambda: len(receiver.received) >= 2, timeout=15)
    by_path = {r.path: r for r in receiver.received}
    assert by_path["/hook?sub"].verified_by == [sub["secret"]]  # each signed with its own secret only
    assert by_path["/hook?task"].verified_by == [task_secret]
    for r in receiver.received:
        assert r.body["type"] == "task.succeeded" and r.body["data"] == status  # the status, as GET shows it
        assert r.body["data"]["result"]["content"] == "hello hooks"
        assert r.webhook_id.startswith("msg_") and r.host == f"127.0.0.1:{receiver.port}"
    assert len(set(receiver.ids())) == 2
    await delivery_when(api, sub["id"], lambda d: d["state"] == "succeeded")
    [d] = await deliveries(api, sub["id"])
    assert (d["id"], d["attempts"], d["last_status"], d["next_attempt_at"]) == (by_path["/hook?sub"].webhook_id, 1,
                                                                                 200, None)
    assert d["history"][0]["status_code"] == 200 and d["history"][0]["latency_ms"] >= 0
    mine = (await api.get(f"/api/v1/agents/tasks/{task_id}/webhook-deliveries")).json()["items"]
    assert {x["subscription_id"] for x in mine} == {sub["id"], None}
    assert {x["id"] for x in mine} == set(receiver.ids())


async def test_a_retry_and_a_failure_are_events_too(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver, receiver.url + "?sub", events=["task.retrying", "task.succeeded"])
    await worker_deps(start_worker, hook_settings)
    flaky = await submit(api, {"message": "flaky", "metadata": {"fail": "transient", "fail_times": 1}})
    await finished(api, flaky)
    resp = await api.post("/api/v1/agents/echo/invoke-async", json={
        "message": "doomed", "metadata": {"fail": "permanent"}, "webhook": {"url": receiver.url + "?task"}})
    receiver.secrets.append(resp.json()["webhook_secret"])
    await finished(api, resp.json()["task_id"])
    await wait_for(lambda: len(receiver.received) >= 3, timeout=15)
    seen = [(r.path, r.body["type"], r.body["data"]["task_id"]) for r in receiver.received]
    assert sorted(seen) == sorted([("/hook?sub", "task.retrying", flaky), ("/hook?sub", "task.succeeded", flaky),
                                   ("/hook?task", "task.failed", resp.json()["task_id"])])
    failed = next(r for r in receiver.received if r.body["type"] == "task.failed")
    assert failed.body["data"]["error"] == "echo: simulated permanent failure" and failed.verified_by
    assert {x["event"] for x in await deliveries(api, sub["id"])} == {"task.retrying", "task.succeeded"}


async def test_retries_follow_the_schedule_under_one_id(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    target = "http://127.0.0.1:9/elsewhere"
    receiver.plan.extend(["500", "hold", f"redirect:{target}", "ok"])
    clock = FakeClock(datetime.now(UTC))
    deps = await worker_deps(start_worker, hook_settings, clock)
    await submit(api, {"message": "retry me"})
    for n, delay in enumerate(SCHEDULE[:3], start=1):
        d = await delivery_when(api, sub["id"], lambda d, n=n: len(d["history"]) == n and d["next_attempt_at"])
        assert at(d["next_attempt_at"]) == clock.now + timedelta(seconds=delay)  # no jitter (rng 0.5)
        clock.advance(seconds=delay - 0.5)
        await dispatch.run_pass(deps)  # not due yet: nothing is sent
        assert len(receiver.received) == n
        clock.advance(seconds=0.5)
        await wait_for(lambda n=n: len(receiver.received) == n + 1, timeout=10)
    d = await delivery_when(api, sub["id"], lambda d: d["state"] == "succeeded")
    assert [a["status_code"] for a in d["history"]] == [500, None, 302, 200]
    errors = [a["error"] for a in d["history"]]
    assert errors[0] == "HTTP 500" and errors[1] == "No answer within 1 s." and "not followed" in errors[2]
    assert errors[3] is None and d["attempts"] == 4
    assert receiver.ids() == [d["id"]] * 4  # one id for every attempt: receivers dedupe on it
    assert all(r.verified_by for r in receiver.received)
    expected = [f'agent_webhook_deliveries_{what}_total{{event="task.succeeded"}} {n}.0'
                for what, n in (("attempted", 4), ("failed", 3), ("succeeded", 1))]

    async def counted() -> bool:  # by the worker (its counts are flushed in batches), exported by the web
        text = (await api.get("/metrics")).text
        return all(line in text for line in expected)

    await wait_for(counted, timeout=10)


async def test_a_worker_restart_loses_nothing(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    # an event written while no worker runs: a scheduled task cancelled before it started
    queued = await submit(api, {"message": "later", "delay_seconds": 600})
    assert (await api.post(f"/api/v1/agents/tasks/{queued}/cancel")).status_code == 200
    clock = FakeClock(datetime.now(UTC))
    receiver.plan.append("hold")
    receiver.hold_seconds = 5.0
    first = await start_worker(hook_settings)
    deps: Deps = await wait_for(lambda: first.ctx.get("deps"))
    deps.clock = clock
    await wait_for(lambda: len(receiver.received) == 1, timeout=15)
    # the worker dies mid-attempt: its jobs and its delivery loop stop where they are, nothing is recorded
    for job in [*first.tasks.values(), first.ctx["webhooks"]]:
        job.cancel()
    await first.close()
    [pending] = await deliveries(api, sub["id"])
    assert pending["state"] == "pending" and pending["history"] == []
    second = await worker_deps(start_worker, hook_settings, clock)
    clock.advance(minutes=2)  # past the dead worker's claim
    await dispatch.run_pass(second)
    d = await delivery_when(api, sub["id"], lambda d: d["state"] == "succeeded")
    assert receiver.ids() == [d["id"], d["id"]] and receiver.received[1].body["type"] == "task.cancelled"
    assert receiver.received[1].body["data"]["task_id"] == queued and receiver.received[1].verified_by


async def test_a_subscription_failing_for_a_day_is_disabled_and_says_why(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    receiver.plan.extend(["500"] * (len(SCHEDULE) + 1))
    clock = FakeClock(datetime.now(UTC))
    deps = await worker_deps(start_worker, hook_settings, clock)
    await submit(api, {"message": "nobody listens"})
    for n, delay in enumerate(SCHEDULE, start=1):
        await delivery_when(api, sub["id"], lambda d, n=n: len(d["history"]) == n)
        assert (await api.get(f"/api/v1/webhooks/{sub['id']}")).json()["enabled"]
        clock.advance(seconds=delay)
        await dispatch.run_pass(deps)
    d = await delivery_when(api, sub["id"], lambda d: d["state"] == "failed")
    assert d["attempts"] == len(SCHEDULE) + 1 and d["last_error"].startswith("Gave up after 11 attempts")
    shown = (await api.get(f"/api/v1/webhooks/{sub['id']}")).json()
    assert shown["enabled"] is False and "failed for 24 h" in shown["disabled_reason"]
    assert "HTTP 500" in shown["disabled_reason"] and shown["disabled_at"]
    # disabled: the next event is not sent to it, and a redelivery is refused until it is enabled
    task_id = await submit(api, {"message": "after"})
    await finished(api, task_id)
    await dispatch.run_pass(deps)  # its event is taken: no delivery to a disabled subscription
    assert (await api.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{d['id']}/redeliver")).status_code == 409
    enabled = await api.patch(f"/api/v1/webhooks/{sub['id']}", json={"enabled": True})
    assert enabled.json()["enabled"] and enabled.json()["disabled_reason"] is None
    again = await api.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{d['id']}/redeliver")
    assert again.status_code == 202 and again.json()["state"] == "pending"
    await wait_for(lambda: receiver.received[-1].answered == "ok", timeout=10)
    assert receiver.received[-1].webhook_id == d["id"] and len(receiver.received) == len(SCHEDULE) + 2


async def test_someone_elses_subscription_is_a_404(api: Client, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    task_id = await submit(api, {"message": "mine"})
    other = {"X-API-Key": await add_user(api.app, "other@example.com")}
    base = f"/api/v1/webhooks/{sub['id']}"
    for method, path, body in (("GET", base, None), ("PATCH", base, {"description": "x"}), ("DELETE", base, None),
                               ("POST", f"{base}/rotate-secret", None), ("GET", f"{base}/deliveries", None),
                               ("POST", f"{base}/deliveries/msg_x/redeliver", None),
                               ("GET", f"/api/v1/agents/tasks/{task_id}/webhook-deliveries", None)):
        resp = await api.request(method, path, json=body, headers=other)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
    assert (await api.get("/api/v1/webhooks", headers=other)).json()["items"] == []
    assert (await api.get(base)).status_code == 200  # still there for its owner


async def test_rotation_signs_with_both_secrets_for_a_while(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    rotated = await api.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret")
    assert rotated.status_code == 200 and rotated.json()["secret"] != sub["secret"]
    receiver.secrets.append(rotated.json()["secret"])
    await worker_deps(start_worker, hook_settings)
    await submit(api, {"message": "rotated"})
    await wait_for(lambda: receiver.received, timeout=15)
    assert receiver.received[0].verified_by == [sub["secret"], rotated.json()["secret"]]
    assert len(receiver.received[0].headers["webhook-signature"].split(" ")) == 2


async def test_other_domains_enqueue_events_and_limits_hold(
        api: Client, hook_settings: Settings, start_worker: Start, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver, events=["batch.completed"])
    owner = (await api.get("/api/v1/auth/me")).json()["user_id"]
    deps: Deps = api.app.state.deps
    [made] = await webhooks.enqueue_event(deps, owner, "batch.completed", {"batch_id": "b1", "completed": 3})
    await worker_deps(start_worker, hook_settings)
    await wait_for(lambda: receiver.received, timeout=15)
    r = receiver.received[0]
    assert (r.webhook_id, r.body["type"]) == (made, "batch.completed")
    assert r.body["data"] == {"batch_id": "b1", "completed": 3}
    assert r.verified_by == [sub["secret"]]
    with pytest.raises(ValueError):
        await webhooks.enqueue_event(deps, owner, "batch.exploded", {})
    # one task's events only (what A2A push notifications use): for the owner's own tasks alone
    task_id = await submit(api, {"message": "just this one"})
    only = await webhooks.create_subscription(deps, owner, SubscriptionCreate(url=receiver.url), task_id=task_id)
    assert only.task_id == task_id
    with pytest.raises(NotFound):
        await webhooks.create_subscription(deps, "someone-else", SubscriptionCreate(url=receiver.url), task_id=task_id)
    await webhooks.delete_subscription(deps, owner, only.id)
    for _ in range(hook_settings.webhook_max_subscriptions - 1):
        await subscribe(api, receiver)
    over = await api.post("/api/v1/webhooks", json={"url": receiver.url})
    assert over.status_code == 409 and over.json()["code"] == "webhook_limit"
    page = (await api.get("/api/v1/webhooks", params={"limit": 15})).json()
    rest = (await api.get("/api/v1/webhooks", params={"limit": 15, "cursor": page["next_cursor"]})).json()
    assert len(page["items"]) + len(rest["items"]) == hook_settings.webhook_max_subscriptions
    assert rest["next_cursor"] is None
    bad = await api.post("/api/v1/webhooks", json={"url": receiver.url, "events": ["task.exploded"]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"].startswith("$.events")
    assert (await api.delete(f"/api/v1/webhooks/{sub['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/webhooks/{sub['id']}")).status_code == 404
