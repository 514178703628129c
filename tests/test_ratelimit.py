"""The GCRA limiter (agent_service.jobs.ratelimit) and job limits (job_limits), on a real Redis.

Time is injected (`now=`) wherever the arithmetic is checked, so no test sleeps for tokens; two
tests use the server's own TIME to check that path (one of them waits 0.25 s, bounded).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from agent_service.config import Settings
from agent_service.jobs import names
from agent_service.jobs.guard import QueueUnavailable
from agent_service.jobs.job_limits import ALL_JOBS, acquire, bucket_key, job_limits_from_settings
from agent_service.jobs.ratelimit import Check, Decision, RateLimiter, RateLimiterUnavailable, headers
from agent_service.redis_server import free_port

T0 = 1_700_000_000.0  # an injected "now" (seconds)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def limiter(redis: aioredis.Redis) -> RateLimiter:
    return RateLimiter(redis)


@pytest.fixture
async def dead_limiter() -> AsyncIterator[RateLimiter]:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    yield RateLimiter(client)
    await client.aclose()


async def test_fresh_key_admits_exactly_the_limit_then_denies(limiter: RateLimiter) -> None:
    decisions = [await limiter.hit("k", 5, 1.0, now=T0) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert [d.reset_after for d in decisions] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    assert [d.retry_after for d in decisions] == pytest.approx([0, 0, 0, 0, 0, 0.2, 0.2])
    assert {d.limit for d in decisions} == {5}


async def test_exact_limit_when_period_over_limit_is_not_whole(limiter: RateLimiter) -> None:
    for limit in (3, 7, 10_000):  # T = 20 s, 8.571428… s, 6 ms
        allowed = [(await limiter.hit(f"odd{limit}", limit, 60.0, now=T0)).allowed for _ in range(limit + 1)]
        assert allowed.count(True) == limit and not allowed[-1]


async def test_headers_count_down_and_carry_retry_after(limiter: RateLimiter) -> None:
    hs = [headers(await limiter.hit("h", 3, 60.0, now=T0)) for _ in range(4)]
    assert [h["RateLimit-Remaining"] for h in hs] == ["2", "1", "0", "0"]
    assert [h["RateLimit-Reset"] for h in hs] == ["20", "40", "60", "60"]
    assert hs[0] == {
        "RateLimit-Limit": "3", "RateLimit-Remaining": "2", "RateLimit-Reset": "20",
        "X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "20",
    }
    assert all("Retry-After" not in h for h in hs[:3])
    assert hs[3]["Retry-After"] == "20"
    for h in hs:  # the X- twins always agree
        assert all(h[f"X-RateLimit-{n}"] == h[f"RateLimit-{n}"] for n in ("Limit", "Remaining", "Reset"))
    # a sub-second wait still says at least 1 s; Reset rounds up
    d = Decision(allowed=False, limit=5, remaining=0, reset_after=1.2, retry_after=0.004)
    assert headers(d)["Retry-After"] == "1" and headers(d)["RateLimit-Reset"] == "2"


async def test_replenishes_as_time_passes(limiter: RateLimiter) -> None:
    for _ in range(5):
        assert (await limiter.hit("r", 5, 1.0, now=T0)).allowed
    assert not (await limiter.hit("r", 5, 1.0, now=T0 + 0.19)).allowed
    # one token every period / limit = 0.2 s
    d = await limiter.hit("r", 5, 1.0, now=T0 + 0.2)
    assert d.allowed and d.remaining == 0
    assert not (await limiter.hit("r", 5, 1.0, now=T0 + 0.2)).allowed
    # never more than the burst, however long the pause
    later = [await limiter.hit("r", 5, 1.0, now=T0 + 3600) for _ in range(6)]
    assert [d.allowed for d in later] == [True] * 5 + [False]


async def test_server_time_and_key_expiry(limiter: RateLimiter, redis: aioredis.Redis) -> None:
    decisions = [await limiter.hit("srv", 3, 3600.0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[3].retry_after == pytest.approx(1200, abs=2)
    assert 3_595_000 < await redis.pttl("rl:srv") <= 3_600_000  # expires once full again, by itself
    # real time replenishes: 5 per second -> one token after 0.2 s
    for _ in range(5):
        assert (await limiter.hit("fast", 5, 1.0)).allowed
    assert not (await limiter.hit("fast", 5, 1.0)).allowed
    await asyncio.sleep(0.25)
    assert (await limiter.hit("fast", 5, 1.0)).allowed
    assert not (await limiter.hit("fast", 5, 1.0)).allowed


async def test_independent_keys_do_not_interfere(limiter: RateLimiter, redis: aioredis.Redis) -> None:
    assert [(await limiter.hit("a", 2, 60, now=T0)).allowed for _ in range(3)] == [True, True, False]
    assert [(await limiter.hit("b", 2, 60, now=T0)).allowed for _ in range(3)] == [True, True, False]
    other = RateLimiter(redis, prefix="other:")
    assert (await other.hit("a", 2, 60, now=T0)).allowed  # a prefix is a namespace


async def test_peek_and_cost(limiter: RateLimiter) -> None:
    peeked = await limiter.peek("c", 5, 1.0, now=T0)
    assert peeked.allowed and peeked.remaining == 4
    assert (await limiter.peek("c", 5, 1.0, now=T0)).remaining == 4  # nothing was charged
    d = await limiter.hit("c", 5, 1.0, cost=3, now=T0)
    assert d.allowed and d.remaining == 2
    denied = await limiter.hit("c", 5, 1.0, cost=3, now=T0)
    assert not denied.allowed and denied.remaining == 2 and denied.retry_after == pytest.approx(0.2)
    assert (await limiter.hit("c", 5, 1.0, cost=2, now=T0)).allowed  # the denial charged nothing
    with pytest.raises(ValueError):
        await limiter.hit("c", 5, 1.0, cost=6)
    with pytest.raises(ValueError):
        await limiter.hit("c", 0, 1.0)


async def test_script_reloaded_after_noscript(limiter: RateLimiter, redis: aioredis.Redis) -> None:
    assert (await limiter.hit("n", 2, 60, now=T0)).allowed
    await redis.script_flush()  # as after a Redis restart: EVALSHA -> NOSCRIPT -> EVAL
    assert (await limiter.hit("n", 2, 60, now=T0)).allowed
    assert not (await limiter.hit("n", 2, 60, now=T0)).allowed


async def test_hit_all_charges_every_bucket_or_none(limiter: RateLimiter) -> None:
    small, big = Check("small", 1, 60), Check("big", 100, 60)
    assert (await limiter.hit_all([small, big], now=T0)).remaining == 0  # binding: fewest left
    denied = await limiter.hit_all([small, big], now=T0)
    assert not denied.allowed and denied.limit == 1 and denied.retry_after == pytest.approx(60)
    assert (await limiter.peek("big", 100, 60, now=T0)).remaining == 98  # only the first call charged it


def _burst(url: str, key: str, limit: int, n: int, barrier: Any, out: Any) -> None:
    """Child process: n concurrent hits on one key, all fired once both processes are ready."""

    async def run() -> int:
        client = aioredis.Redis.from_url(url, max_connections=n)
        limiter = RateLimiter(client)
        await asyncio.gather(*(client.ping() for _ in range(n)))  # open the connections first
        barrier.wait(30)
        decisions = await asyncio.gather(*(limiter.hit(key, limit, 3600.0) for _ in range(n)))
        await client.aclose()
        return sum(d.allowed for d in decisions)

    out.put(asyncio.run(run()))


def test_two_processes_admit_exactly_the_limit_in_total(redis_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    limit, per_process = 37, 60
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_burst, args=(redis_url, "shared", limit, per_process, barrier, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        allowed = [out.get(timeout=45) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    assert sum(allowed) == limit, allowed


async def test_redis_down_raises_and_hit_or_chooses(dead_limiter: RateLimiter) -> None:
    with pytest.raises(QueueUnavailable) as exc:
        await dead_limiter.hit("k", 5, 60)
    assert isinstance(exc.value, RateLimiterUnavailable) and exc.value.status == 503
    with capture_logs() as logs:
        d = await dead_limiter.hit_or("k", 5, 60, fail_open=True)
        assert d.allowed and d.degraded and headers(d) == {}
        with pytest.raises(RateLimiterUnavailable):
            await dead_limiter.hit_or("k", 5, 60, fail_open=False)
    events = [(e["event"], e["log_level"]) for e in logs]
    assert ("rate limiter unavailable, failing open", "warning") in events
    assert ("rate limiter unavailable, failing closed", "warning") in events


# --- job limits ---------------------------------------------------------------------------

LIMITS = {ALL_JOBS: 10, names.INVOKE_AGENT: 2, names.INVOKE_AGENT_STREAMING: 3}


async def test_job_over_its_function_limit_is_deferred_without_using_the_global_bucket(
    limiter: RateLimiter,
) -> None:
    assert await acquire(limiter, names.INVOKE_AGENT, LIMITS, now=T0) is None
    assert await acquire(limiter, names.INVOKE_AGENT, LIMITS, now=T0) is None
    delay = await acquire(limiter, names.INVOKE_AGENT, LIMITS, now=T0)
    assert delay == pytest.approx(30.0)  # 2 per minute: the next slot is 30 s away
    for _ in range(5):  # denied again and again: still charges nothing anywhere
        assert await acquire(limiter, names.INVOKE_AGENT, LIMITS, now=T0) is not None
    # the global bucket paid for the two runs only: 8 left for everything else
    for _ in range(3):
        assert await acquire(limiter, names.INVOKE_AGENT_STREAMING, LIMITS, now=T0) is None
    for _ in range(5):
        assert await acquire(limiter, "cleanup_temp_files", LIMITS, now=T0) is None  # global only
    assert await acquire(limiter, "cleanup_temp_files", LIMITS, now=T0) == pytest.approx(6.0)
    # and after its deferral the invoke job runs
    assert await acquire(limiter, names.INVOKE_AGENT, LIMITS, now=T0 + 30) is None


async def test_global_limit_defers_without_using_the_function_bucket(limiter: RateLimiter) -> None:
    limits = {ALL_JOBS: 2, names.INVOKE_AGENT: 5}
    assert await acquire(limiter, names.INVOKE_AGENT, limits, now=T0) is None
    assert await acquire(limiter, names.INVOKE_AGENT, limits, now=T0) is None
    delay = await acquire(limiter, names.INVOKE_AGENT, limits, now=T0)
    assert delay is not None and delay == pytest.approx(30.0)
    own = await limiter.peek(bucket_key(names.INVOKE_AGENT), 5, 60, now=T0)
    assert own.remaining == 2  # 5 - 2 runs - this peek: the deferred one took nothing


async def test_job_limits_on_server_time_and_settings(limiter: RateLimiter) -> None:
    limits = {ALL_JOBS: 1000, names.INVOKE_AGENT_STREAMING: 1}
    assert await acquire(limiter, names.INVOKE_AGENT_STREAMING, limits) is None
    delay = await acquire(limiter, names.INVOKE_AGENT_STREAMING, limits)
    assert delay is not None and 59 < delay <= 60
    assert await acquire(limiter, "no_limits_at_all", {}) is None
    with pytest.raises(ValueError):
        await acquire(limiter, ALL_JOBS, limits)
    mapped = job_limits_from_settings(Settings(job_rate_limit_all=7, job_rate_limit_invoke=5, job_rate_limit_stream=3))
    assert mapped == {ALL_JOBS: 7, names.INVOKE_AGENT: 5, names.INVOKE_AGENT_STREAMING: 3}


async def test_job_limits_when_redis_is_down(dead_limiter: RateLimiter) -> None:
    with capture_logs() as logs:
        assert await acquire(dead_limiter, names.INVOKE_AGENT, LIMITS) is None  # fail open: the job runs
        with pytest.raises(RateLimiterUnavailable):
            await acquire(dead_limiter, names.INVOKE_AGENT, LIMITS, fail_open=False)
    assert [e["failing"] for e in logs] == ["open", "closed"]
