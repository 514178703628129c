"""kit/ratelimit.py's Quota: API limits leased a few tokens at a time (real Redis). A busy caller
costs one round trip per lease, every process together never admits more than the limit, and
what a lease leaves unspent goes back to the bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from agent_service.kit.ratelimit import LEASE_SECONDS, Limit, Quota


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def evals(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_a_busy_caller_takes_one_lease_for_many_requests_with_exact_headers(redis: Redis) -> None:
    quota = Quota(redis, prefix="q1:")
    limit = Limit(1000)  # leases of 10
    await quota.take("user:warm", limit)  # loads the script (a first EVALSHA is answered NOSCRIPT)
    before = await evals(redis)
    decisions = [await quota.take("user:a", limit) for _ in range(10)]
    assert await evals(redis) - before == 1
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == list(range(999, 989, -1))  # as if charged one by one


async def test_small_limits_are_exact_and_two_processes_never_admit_more_than_the_limit(redis: Redis) -> None:
    a, b = Quota(redis, prefix="q2:"), Quota(redis, prefix="q2:")  # two web processes, one bucket
    small = Limit(20)  # under 100: one token per lease, the per-request behaviour
    answers = [await (a if i % 2 else b).take("user:s", small) for i in range(30)]
    assert [d.allowed for d in answers] == [True] * 20 + [False] * 10
    assert sorted(d.remaining for d in answers[:20]) == list(range(20))
    assert all(d.retry_after >= 1 and d.remaining == 0 for d in answers[20:])

    big = Limit(400)  # leases of 4, and never more than half of what is left
    admitted = sum([(await (a if i % 3 else b).take("user:b", big)).allowed for i in range(600)])
    assert 400 - 2 * 4 <= admitted <= 400


async def test_unspent_tokens_go_back_with_the_next_lease(redis: Redis) -> None:
    now = [0.0]
    quota = Quota(redis, prefix="q3:", clock=lambda: now[0])
    limit = Limit(1000)
    assert (await quota.take("user:u", limit)).remaining == 999  # a lease of 10, one spent
    now[0] += LEASE_SECONDS  # the lease is over: its 9 unspent tokens are given back with the next
    assert (await quota.take("user:u", limit)).remaining == 998
