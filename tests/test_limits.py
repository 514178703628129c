"""Rate limits shared by every process (real Redis, real uvicorn processes, real workers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from agent_service.kit.ratelimit import Limit, LocalLimiter, RateLimiter, headers
from tests.support.apps import Client, add_user, app_client
from tests.support.processes import bootstrap_user
from tests.support.tasks import status, submit
from tests.support.waiting import wait_for, wait_http_ok
from tests.support.workers import quiescent

Start = Callable[..., Any]


async def test_gcra_admits_exactly_the_limit_then_replenishes(redis_url: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    limiter = RateLimiter(r)
    lim = Limit(5, period=1.0)
    t0 = 1_000_000
    decisions = [await limiter.hit([("k", lim)], now_ms=t0) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    denied = decisions[5]
    assert denied.retry_after == pytest.approx(0.2, abs=0.01)
    assert headers(denied)["Retry-After"] == "1" and headers(denied)["RateLimit-Remaining"] == "0"
    assert headers(decisions[0]) | {} == {
        "RateLimit-Limit": "5", "RateLimit-Remaining": "4", "RateLimit-Reset": "1",
        "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4", "X-RateLimit-Reset": "1"}
    assert (await limiter.hit([("k", lim)], now_ms=t0 + 200)).allowed  # one token back after 1/5 s
    assert not (await limiter.hit([("k", lim)], now_ms=t0 + 200)).allowed
    assert (await limiter.hit([("other", lim)], now_ms=t0)).allowed  # keys are independent
    # several buckets: a denial in one charges none
    small, big = Limit(1, period=60), Limit(100, period=60)
    assert (await limiter.hit([("a", small), ("all", big)], now_ms=t0)).allowed
    assert not (await limiter.hit([("a", small), ("all", big)], now_ms=t0)).allowed
    assert (await limiter.hit([("all", big)], now_ms=t0)).remaining == 98  # only the first call charged it
    await r.aclose()


def test_local_limiter_matches() -> None:
    now = [0.0]
    local = LocalLimiter(lambda: now[0])
    lim = Limit(3, period=3.0)
    assert [local.hit("k", lim).allowed for _ in range(4)] == [True, True, True, False]
    now[0] += 1000
    assert local.hit("k", lim).allowed


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RATE_LIMIT_FREE": "20", "RATE_LIMIT_STREAM_FREE": "3", "RATE_LIMIT_LOGIN_PER_IP": "3"}


@pytest.mark.e2e  # two uvicorn child processes
@pytest.mark.sqlite_only  # the limiter is Redis's: no SQL in what it checks
def test_burst_across_two_web_processes_admits_exactly_the_limit(env: dict[str, str], spawn: Callable[..., Any]):
    key = bootstrap_user(env, "burst@example.com")
    bases = []
    for _ in range(2):
        port = free_port()
        spawn("web", env, PORT=str(port))
        bases.append(f"http://127.0.0.1:{port}")
    for base in bases:
        wait_http_ok(f"{base}/health/live")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(headers={"X-API-Key": key}, timeout=10) as c:
            return await asyncio.gather(*(c.get(f"{bases[i % 2]}/api/v1/agents") for i in range(60)))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    others = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)]
    assert len(ok) == 20 and len(limited) == 40, others
    assert {r.headers["ratelimit-limit"] for r in responses} == {"20"}
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in ok) == list(range(20))
    assert all(r.headers["x-ratelimit-limit"] == "20" for r in responses)
    for r in limited:
        assert int(r.headers["retry-after"]) >= 1 and r.headers["ratelimit-remaining"] == "0"
        assert r.headers["content-type"] == "application/problem+json" and r.json()["code"] == "rate_limited"


async def test_tiers_stream_limit_and_login_per_ip(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings()
    async with app_client(settings) as client:
        for _ in range(3):
            async with client.stream("POST", "/api/v1/agents/echo/stream", json={"message": "x"}) as r:
                assert r.status_code == 200 and r.headers["ratelimit-limit"] == "3"
                await r.aread()
        r = await client.post("/api/v1/agents/echo/stream", json={"message": "x"})
        assert r.status_code == 429 and r.headers["retry-after"]
        assert (await client.get("/api/v1/agents")).status_code == 200  # the API bucket is separate
        pro = await add_user(client.app, "pro@example.com", tier="pro", password="pro password!")
        r = await client.get("/api/v1/agents", headers={"X-API-Key": pro})
        assert r.headers["ratelimit-limit"] == str(settings.rate_limit_pro)
        # errors carry the headers too
        r = await client.post("/api/v1/agents/echo/invoke", json={"message": ""})
        assert r.status_code == 422 and r.headers["ratelimit-limit"] == "20"
        del client.headers["X-API-Key"]  # login is anonymous: limited per client IP
        codes = [(await client.post("/api/v1/auth/token", json={"email": "pro@example.com", "password": "no"}))
                 for _ in range(4)]
        assert [r.status_code for r in codes] == [401, 401, 401, 429]
        assert codes[0].headers["ratelimit-limit"] == "3"


async def test_redis_down_fails_open_for_reads_local_for_sync_closed_for_queueing(make_settings) -> None:  # type: ignore[no-untyped-def]
    async with app_client(make_settings(rate_limit_free=2, redis_url=f"redis://127.0.0.1:{free_port()}/0")) as c:
        for _ in range(3):
            assert (await c.get("/api/v1/agents")).status_code == 200  # open: no limit at all
        codes = [(await c.post("/api/v1/agents/echo/invoke", json={"message": "x"})).status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # limited in process memory
        r = await c.post("/api/v1/agents/echo/invoke-async", json={"message": "x"})
        assert r.status_code == 503 and r.json()["code"] == "rate_limiter_unavailable"


@pytest.mark.slow  # the deferred job waits for the next token, 10 s
@pytest.mark.sqlite_only  # the job limiter is Redis's, and 20 s twice is too long for what SQL adds
async def test_job_limits_hold_across_two_workers_and_defer_without_using_tries(
    make_settings, start_worker: Start,  # type: ignore[no-untyped-def]
) -> None:
    settings: Settings = make_settings(job_rate_limit_invoke=6, rate_limit_free=100000)
    workers = [await start_worker(settings), await start_worker(settings)]
    async with app_client(settings) as client:
        ids = [await submit(client, {"message": f"j{i}"}) for i in range(8)]

        async def states() -> list[dict[str, Any]]:
            return [await status(client, t) for t in ids]

        async def six_done() -> list[dict[str, Any]] | None:
            ss = await states()
            return ss if sum(s["state"] == "SUCCESS" for s in ss) == 6 else None

        await wait_for(six_done, timeout=10)
        # nothing else may start within the window: both workers idle, and no job due for a second
        await wait_for(lambda: quiescent(*workers, due_within=1.0), timeout=5)
        ss = await states()
        assert sum(s["state"] == "SUCCESS" for s in ss) == 6
        waiting = [s for s in ss if s["state"] != "SUCCESS"]
        assert len(waiting) == 2 and all(s["state"] == "PENDING" and s["tries"] == 0 for s in waiting)
        # the next token comes 10 s after the burst: a deferred job then runs as its first try
        s = await wait_for(lambda: _done(client, waiting[0]["task_id"]), timeout=20)
        assert s["tries"] == 1


async def _done(client: Client, task_id: str) -> dict[str, Any] | None:
    s = await status(client, task_id)
    return s if s["state"] == "SUCCESS" else None
