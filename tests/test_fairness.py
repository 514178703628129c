"""One user cannot starve the workers: a cap on each user's running jobs (by tier, shared by all
workers through Redis, released however a run ends, expiring with a dead worker), and a pick
order that puts another user's job ahead of a burst's waiting jobs."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from arq.utils import timestamp_ms

from agent_service.config import Settings
from agent_service.kit.redis import connect
from agent_service.tasks import queue
from agent_service.tasks.fairness import UserSlots
from agent_service.tasks.policy import job_tier, running_cap
from agent_service.tasks.queue import JobQueue
from agent_service.tasks.schemas import AgentJob
from tests.support.apps import Client, add_user
from tests.support.faults import Stack, ts
from tests.support.tasks import finished, status, submit
from tests.support.waiting import wait_for, wait_until

Start = Callable[..., Any]
URL = "/api/v1/agents/echo/invoke-async"


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def peak_overlap(spans: Iterable[tuple[Any, Any]]) -> int:
    """The most spans open at one instant (one ending as another starts is not an overlap)."""
    pairs = list(spans)
    edges = sorted([(a, 1) for a, _ in pairs] + [(b, -1) for _, b in pairs])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


async def owner_of(client: Client) -> str:
    items = (await client.get("/api/v1/agents/tasks")).json()["items"]
    return str(items[0]["owner_id"])


def slots_of(client: Client) -> UserSlots:
    return UserSlots.of(client.app.state.deps)


# --- (a) the cap --------------------------------------------------------------------------------


async def test_a_free_users_burst_never_runs_more_than_its_cap(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    await start_worker(make_settings(jobs_running_free=2, worker_max_jobs=4))
    burst = [await submit(client, {"message": "x", "metadata": {"delay": 0.4}}) for _ in range(6)]
    owner, slots = await owner_of(client), slots_of(client)
    seen: set[int] = set()

    async def all_done() -> bool:
        seen.add(len(await slots.running(owner)))
        states = [(await status(client, t))["state"] for t in burst]
        return all(s == "SUCCESS" for s in states)

    await wait_for(all_done, timeout=30)
    final = [await finished(client, t) for t in burst]
    assert max(seen) <= 2, seen
    assert peak_overlap((when(s["started_at"]), when(s["completed_at"])) for s in final) == 2
    # waiting for a slot is not a try: every job ran once, with no retry used up
    assert [(s["state"], s["tries"], s["retries"]) for s in final] == [("SUCCESS", 1, 0)] * 6
    assert await slots.running(owner) == []


async def test_every_way_a_run_ends_gives_its_slot_back(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    # with a cap of one and a 30 s lease, a slot kept by any of these would hold up the next job
    await start_worker(make_settings(jobs_running_free=1, worker_max_jobs=4))
    slots = slots_of(client)
    failed = await submit(client, {"message": "x", "metadata": {"fail": "permanent"}})
    retried = await submit(client, {"message": "x", "metadata": {"fail": "transient", "fail_times": 1}})
    cancelled = await submit(client, {"message": "x", "metadata": {"delay": 5}})
    after = await submit(client, {"message": "x"})
    owner = await owner_of(client)
    assert (await finished(client, failed))["state"] == "FAILURE"
    await wait_for(lambda: _state_is(client, cancelled, "STARTED"), timeout=10)
    assert (await client.post(f"/api/v1/agents/tasks/{cancelled}/cancel")).status_code in (200, 202)
    assert (await finished(client, cancelled))["state"] == "REVOKED"
    for task_id in (retried, after):
        s = await finished(client, task_id, timeout=10)
        assert s["state"] == "SUCCESS", s
    assert (await status(client, retried))["tries"] == 2
    await wait_for(lambda: _no_slots(slots, owner), timeout=5)


async def _state_is(client: Client, task_id: str, state: str) -> bool:
    return bool((await status(client, task_id))["state"] == state)


async def _no_slots(slots: UserSlots, owner: str) -> bool:
    return await slots.running(owner) == []


# --- (b) another user's job while a burst waits -----------------------------------------------------


async def test_another_users_job_starts_while_a_burst_waits(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    await start_worker(make_settings(jobs_running_free=2, worker_max_jobs=4))
    burst = [await submit(client, {"message": "x", "metadata": {"delay": 1.0}}) for _ in range(6)]

    async def two_running() -> list[str]:
        running = [t for t in burst if (await status(client, t))["state"] == "STARTED"]
        return running if len(running) == 2 else []

    first = await wait_for(two_running, timeout=10)
    other = {"X-API-Key": await add_user(client.app, f"other-{uuid.uuid4().hex[:6]}@example.com")}
    resp = await client.post(URL, json={"message": "me too"}, headers=other)
    assert resp.status_code == 202
    mine = resp.json()["task_id"]

    async def mine_done() -> dict[str, Any] | None:
        s = (await client.get(f"/api/v1/agents/tasks/{mine}", headers=other)).json()
        return s if s["state"] == "SUCCESS" else None

    me = await wait_for(mine_done, timeout=10)
    done = [await finished(client, t, timeout=30) for t in burst]
    # it did not wait for any of the burst to finish, nor behind the burst's waiting jobs
    assert when(me["started_at"]) < min(when(s["completed_at"]) for s in done)
    waited = [s for s in done if s["task_id"] not in first]
    assert len(waited) == 4 and all(when(me["started_at"]) < when(s["started_at"]) for s in waited)


# --- (c) a dead worker's slots --------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.sqlite_only
def test_a_killed_workers_slots_expire_and_its_users_jobs_run_again(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "stack", JOB_LEASE_SECONDS="3", JOBS_RUNNING_FREE="2", WORKER_MAX_JOBS="4")
    try:
        stack.start(workers=1)
        jobs = [stack.submit("x", metadata={"delay": 1.5}) for _ in range(4)]

        def holders() -> set[str]:
            with stack.redis_client() as r:
                keys = list(r.scan_iter(match=f"{stack.prefix}jobs:user:*:running"))
                return {m.decode() for k in keys for m in r.zrange(k, 0, -1)}

        def two_started() -> set[str]:
            started = {t for t in jobs if stack.status(t)["state"] == "STARTED"}
            return started if len(started) == 2 and holders() == started else set()

        victims = wait_until(two_started, timeout=15, interval=0.05, message=stack.logs)
        old = stack.workers[0]
        old.signal(signal.SIGKILL)
        assert old.wait_exit(5) == -signal.SIGKILL
        assert holders() == victims  # nobody gave them back: only their expiry can
        new = stack.start_worker()
        final = stack.wait_state(jobs, {"SUCCESS"}, timeout=40)
        for t in jobs:
            s = final[t]
            if t in victims:
                assert s["worker_losses"] == 1 and s["tries"] == 2, s
            else:
                assert (s["worker_losses"], s["tries"], s["retries"]) == (0, 1, 0), s
        # the new worker kept to the cap while it took over the dead one's jobs
        starts = {e["task_id"]: ts(e) for e in new.events("job.started")}
        ends = {e["task_id"]: ts(e) for e in new.events("job.succeeded")}
        assert set(starts) == set(jobs)
        assert peak_overlap((starts[t], ends[t]) for t in jobs) <= 2
        assert holders() == set()
    finally:
        stack.close()


# --- (d) the pick order ----------------------------------------------------------------------------


def _job(task_id: str, owner: str | None) -> AgentJob:
    return AgentJob(task_id=task_id, agent_id="echo", message="x", owner_id=owner)


async def _queue_order(settings: Settings,
                       jobs: Sequence[tuple[str, str | None, str]]) -> tuple[list[str], list[float]]:
    """Queue (task id, owner, priority) in turn as the API would; the queue's order and scores."""
    redis = connect(settings)
    try:
        q = JobQueue(redis, settings)
        for task_id, owner, priority in jobs:
            defer_until, defer_by = queue.schedule(priority, None)
            assert await q.enqueue(queue.INVOKE_AGENT, _job(task_id, owner), job_id=task_id, defer_until=defer_until,
                                   defer_by=defer_by)
        entries = await redis.zrange(settings.queue_name, 0, -1, withscores=True)
    finally:
        await redis.aclose()
    return [m.decode() for m, _ in entries], [s for _, s in entries]


@pytest.mark.sqlite_only
async def test_a_burst_then_another_users_job_puts_it_after_at_most_one(settings: Settings) -> None:
    burst = [(f"a{i}", "alice", "normal") for i in range(20)]
    before = timestamp_ms()
    order, scores = await _queue_order(settings, [*burst, ("b0", "bob", "normal"), ("b1", "bob", "normal")])
    assert order.index("b0") <= 1  # after at most the burst's first job
    assert order.index("b1") <= 3  # bob's second waits for alice's second, interleaved
    assert order[:6] == ["a0", "b0", "a1", "b1", "a2", "a3"]
    assert [t for t in order if t.startswith("a")] == [t for t, _, _ in burst]  # alice's own order is kept
    # every score is due now (a future one would be "deferred" even on an idle worker) and within the bound
    assert all(before - queue.STARVATION_BOUND_SECONDS * 1000 <= s <= timestamp_ms() for s in scores)


@pytest.mark.sqlite_only
async def test_priority_still_orders_a_users_jobs_and_weighs_against_others(settings: Settings) -> None:
    jobs: list[tuple[str, str | None, str]] = [(f"a{i}", "alice", "normal") for i in range(20)]
    jobs += [("a-high", "alice", "high"), ("a-low", "alice", "low"), ("b-low", "bob", "low"), ("sys", None, "low")]
    order, _ = await _queue_order(settings, jobs)
    assert order[0] == "a-high"  # her waiting normal jobs do not hold up her high one
    assert order[-1] == "a-low"  # nor does her low one overtake them
    # another user's low job waits for about 30 s / 5 s = 6 of alice's normal jobs, not for all 20
    assert order.index("b-low") == 8 and order.index("sys") == 9


@pytest.mark.sqlite_only
async def test_a_job_leaves_the_waiting_count_when_picked_up(settings: Settings) -> None:
    """A worker picking a job up (running or parked) stops it counting against its owner's next ones."""
    redis = connect(settings)
    try:
        slots = UserSlots(redis, prefix=settings.redis_key_prefix, queue_name=settings.queue_name,
                          lease_seconds=settings.job_lease_seconds)
        waiting = queue.waiting_keys(settings.redis_key_prefix, "alice")
        q = JobQueue(redis, settings)
        for i in range(3):
            assert await q.enqueue(queue.INVOKE_AGENT, _job(f"a{i}", "alice"), job_id=f"a{i}", defer_by=-30)
        assert sum([await redis.zcard(k) for k in waiting]) == 3
        score = int(await redis.zscore(settings.queue_name, "a0") or 0)
        assert await slots.acquire("alice", "a0", cap=1, score=score, parked_until_ms=timestamp_ms() + 9000,
                                   waiting=waiting)
        # at the cap: parked, its queue entry moved ahead (not due), and no longer waiting either
        assert not await slots.acquire("alice", "a1", cap=1, score=score, parked_until_ms=timestamp_ms() + 9000,
                                       waiting=waiting)
        assert (await redis.zscore(settings.queue_name, "a1") or 0) > timestamp_ms()
        assert sum([await redis.zcard(k) for k in waiting]) == 1
        # giving a0's slot back wakes a1: due again, but behind a low job submitted now
        now = timestamp_ms()
        woken = await slots.release("alice", "a0", now_ms=now, floor_ms=now - queue.FAIR_WINDOW_MS)
        assert woken == "a1"
        assert now - queue.FAIR_WINDOW_MS <= (await redis.zscore(settings.queue_name, "a1") or 0) <= now
    finally:
        await redis.aclose()


def test_jobs_queued_before_tiers_decode_and_get_the_default_cap(settings: Settings) -> None:
    old = msgspec.convert({"task_id": "t", "agent_id": "echo", "message": "x", "owner_id": "u"}, AgentJob)
    assert old.tier is None and running_cap(settings, old.tier) == settings.jobs_running_free
    assert running_cap(settings, "pro") == settings.jobs_running_pro
    assert running_cap(settings, "platinum") == settings.jobs_running_free
    assert job_tier("free", is_admin=True, default="free") == "enterprise"
    assert job_tier(None, is_admin=False, default="pro") == "pro"
