"""The wake-up of idle workers (kit/wakeup.py, kit/fast_worker.py): a job queued by the project's
enqueue (or made due by a slot given back) starts at once on a worker that would otherwise not
look at the queue for its whole poll delay; the signal is handed on when one worker cannot take
everything; a deferred job starts at its time without any signal; a worker blocked on the signal
survives a Redis restart.

The workers here run a bare job (it notes when it started) with a poll delay and a heartbeat far
longer than any wait of the test: each test would time out if the job waited for a poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.worker import func
from redis.asyncio import Redis

from agent_service.cli.embedded import EmbeddedRedis
from agent_service.config import Settings
from agent_service.kit import wakeup
from agent_service.kit.fast_worker import FastWorker
from agent_service.kit.redis import connect, redis_settings
from agent_service.kit.serializer import deserialize, serialize
from agent_service.tasks.queue import JobQueue
from tests.support.waiting import wait_for

pytestmark = pytest.mark.sqlite_only  # no SQL: the queue and the loop only

LONG = 30.0  # poll delay and heartbeat: far beyond every bounded wait below
BOUND = 5.0  # a woken worker starts the job well within this


class Bare:
    """FastWorkers of one queue running `bare` jobs, and when each job started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: dict[str, float] = {}
        self.workers: list[tuple[FastWorker, asyncio.Task[None]]] = []

    def start(self, *, max_jobs: int = 10, job_seconds: float = 0.0, url: str | None = None) -> FastWorker:
        started = self.started

        async def bare(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
            started[ctx["job_id"]] = time.time()
            await asyncio.sleep(job_seconds)

        settings = msgspec.structs.replace(self.settings, redis_url=url or self.settings.redis_url)
        worker = FastWorker(functions=[func(bare, name="bare")], queue_name=settings.queue_name,
                            redis_settings=redis_settings(settings), max_jobs=max_jobs,
                            poll_delay=LONG, health_check_interval=LONG, handle_signals=False,
                            keep_result=0, job_serializer=serialize, job_deserializer=deserialize)
        self.workers.append((worker, asyncio.create_task(worker.async_run())))
        return worker

    async def close(self) -> None:
        for worker, task in self.workers:
            task.cancel()
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.CancelledError, TimeoutError):
                pass
            await worker.close()


@pytest.fixture
async def bare(settings: Settings) -> AsyncIterator[Bare]:
    b = Bare(settings)
    yield b
    await b.close()


async def blocked(redis: Redis, n: int = 1) -> bool:
    """`n` clients blocked in BLPOP: the workers are idle, waiting for the signal."""
    return int((await redis.info("clients"))["blocked_clients"]) >= n


def queue_of(settings: Settings, redis: Any) -> JobQueue:
    return JobQueue(redis, settings)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Any]:
    conn = connect(settings)
    yield conn
    await conn.aclose()


async def test_an_idle_worker_starts_a_new_job_at_once_despite_a_long_poll_delay(
    settings: Settings, bare: Bare, redis: Any
) -> None:
    bare.start()
    await wait_for(lambda: blocked(redis), timeout=BOUND)
    assert await queue_of(settings, redis).enqueue("bare", {"n": 1}, job_id="j1")
    await wait_for(lambda: "j1" in bare.started, timeout=BOUND)


async def test_a_job_queued_by_arqs_own_enqueue_starts_once_the_queue_is_woken(
    settings: Settings, bare: Bare, redis: Any
) -> None:
    """arq's enqueue_job knows nothing of the signal: `wakeup.wake` is what such a caller adds."""
    bare.start()
    await wait_for(lambda: blocked(redis), timeout=BOUND)
    await redis.enqueue_job("bare", {"n": 1}, _job_id="j1", _queue_name=settings.queue_name)
    await wakeup.wake(redis, settings.queue_name)
    await wait_for(lambda: "j1" in bare.started, timeout=BOUND)


async def test_a_deferred_job_starts_at_its_time_without_a_signal(settings: Settings, bare: Bare,
                                                                  redis: Any) -> None:
    bare.start()
    await wait_for(lambda: blocked(redis), timeout=BOUND)
    due = time.time() + 1.0
    assert await queue_of(settings, redis).enqueue("bare", {"n": 1}, job_id="later", defer_by=1.0)
    # the enqueue's signal woke the worker, which learnt the job's time and sleeps until then
    await wait_for(lambda: "later" in bare.started, timeout=BOUND)
    assert bare.started["later"] >= due - 0.05  # not early (arq's scores are ms)


async def test_a_worker_that_fills_up_hands_the_signal_on_to_another_idle_worker(
    settings: Settings, bare: Bare, redis: Any
) -> None:
    """Two one-slot workers, two jobs queued at once (one signal left: the key holds one): the
    first worker takes one job and wakes the other for the second, which must not wait a poll."""
    for _ in range(2):
        bare.start(max_jobs=1, job_seconds=LONG)  # each job holds its worker's only slot
    await wait_for(lambda: blocked(redis, 2), timeout=BOUND)
    now = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=True)
    for job_id in ("a", "b"):  # both queued before either worker wakes (arq's keys), then one signal
        pipe.psetex(job_key_prefix + job_id, 60_000,
                    serialize_job("bare", ({"n": 1},), {}, None, now, serializer=serialize))
        pipe.zadd(settings.queue_name, {job_id: now})
    await pipe.execute()
    await wakeup.wake(redis, settings.queue_name)
    await wait_for(lambda: {"a", "b"} <= bare.started.keys(), timeout=BOUND)


async def test_a_job_put_back_in_the_queue_wakes_an_idle_worker(settings: Settings, bare: Bare,
                                                                redis: Any) -> None:
    """A job of a worker that stops is put back in the queue (arq's finish_job, not finished):
    another idle worker takes it at once."""
    first = bare.start(max_jobs=1, job_seconds=LONG)
    await wait_for(lambda: blocked(redis), timeout=BOUND)
    assert await queue_of(settings, redis).enqueue("bare", {"n": 1}, job_id="moved")
    await wait_for(lambda: "moved" in bare.started, timeout=BOUND)
    bare.started.clear()
    bare.start()  # idle, blocked on the signal (the first one is full: it waits for its slot)
    await wait_for(lambda: blocked(redis), timeout=BOUND)
    first.handle_sig(2)  # stop now: the running job is cancelled and put back
    await wait_for(lambda: "moved" in bare.started, timeout=BOUND)


async def test_a_worker_blocked_on_the_signal_survives_a_redis_restart(
    settings: Settings, bare: Bare, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    redis: Any = None
    try:
        url = server.url
        worker = bare.start(url=url)
        conn = Redis.from_url(url)
        await wait_for(lambda: blocked(conn), timeout=BOUND)
        await conn.aclose()
        server.stop()
        server = EmbeddedRedis(tmp_path / "redis", port=server.port, appendonly=False).start()
        redis = connect(msgspec.structs.replace(settings, redis_url=url))
        # the worker reconnects by itself (its backoff is at most BACKOFF_MAX) and is woken again
        await wait_for(lambda: blocked(redis), timeout=20)
        assert await queue_of(settings, redis).enqueue("bare", {"n": 1}, job_id="after")
        await wait_for(lambda: "after" in bare.started, timeout=BOUND)
        assert worker.exit_code == 0
    finally:
        if redis is not None:
            await redis.aclose()
        server.stop()

