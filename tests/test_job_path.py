"""The job path's batched writes keep every semantic: runs that start and succeed at the same moment
share SQL statements (tasks/lifecycle.py) yet each gets its own counts, events and result, a
finished task among them stays finished; a start that does not become a run (parked by its
owner's cap) gives the run's mark back, so the next run is no lost worker; a worker's buffered
metrics reach Redis in the order they happened and survive a Redis blip."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_service.cli.embedded import EmbeddedRedis, free_port
from agent_service.config import Settings
from agent_service.kit.deps import Deps, open_deps
from agent_service.kit.metrics import JobMetrics
from agent_service.tasks import lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks.lifecycle import Run, Submission
from agent_service.tasks.schemas import JobResult, ProgressEvent, StateEvent
from tests.support.apps import Client
from tests.support.tasks import finished, submit

Start = Callable[..., Any]


@pytest.fixture
async def deps(settings: Settings) -> AsyncIterator[Deps]:
    d = await open_deps(settings)
    yield d
    await d.aclose()


async def _new_task(deps: Deps) -> str:
    task_id = uuid.uuid4().hex
    # a function no worker serves: the job sits in the queue while the test drives the lifecycle
    await lifecycle.submit(deps, Submission(task_id=task_id, kind="invoke", function="nobody_runs_this",
                                            payload={"task_id": task_id}, agent_id="echo", owner_id="u1",
                                            request_id=None))
    return task_id


def _result(deps: Deps, content: str) -> JobResult:
    now = deps.clock()
    return JobResult(content=content, metadata={}, agent_id="echo", session_id=None, started_at=now, completed_at=now)


async def test_runs_starting_and_succeeding_together_each_keep_their_own_record(deps: Deps) -> None:
    tasks = [await _new_task(deps) for _ in range(12)]
    gone = tasks[0]
    assert await lifecycle.revoke(deps, gone)  # finished before its (re-delivered) job starts
    # tries and lost workers differ within the batch: first runs, second runs, a run after a dead worker
    plan = {t: (1 + i % 2, i % 3 == 0) for i, t in enumerate(tasks)}
    runs = {t: Run(deps, t, plan[t][0]) for t in tasks}

    async def start(task_id: str) -> Any:
        tries, lost = plan[task_id]
        return await lifecycle.start(deps, task_id, attempt=tries, worker_lost=lost, run=runs[task_id])

    counts = dict(zip(tasks, await asyncio.gather(*(start(t) for t in tasks)), strict=True))
    assert counts[gone] is None and runs[gone].pending == []  # nothing written for a finished task
    for task_id in tasks[1:]:
        assert counts[task_id] is not None and counts[task_id].worker_losses == int(plan[task_id][1])
        runs[task_id].note(lifecycle.LOADED)
        runs[task_id].flush_soon()
    done = await asyncio.gather(*(runs[t].succeed(_result(deps, t)) for t in tasks))
    assert done == [t != gone for t in tasks]

    for task_id in tasks[1:]:
        record = await task_store.get(deps.db, task_id)
        assert record is not None and record.state == "SUCCESS" and record.tries == plan[task_id][0]
        assert record.started_at is not None and record.completed_at is not None
        events = [e for _, e in await lifecycle.live(deps).read(task_id)]
        assert [e.state for e in events if isinstance(e, StateEvent)] == ["PENDING", "STARTED", "SUCCESS"]
        assert [e.progress for e in events if isinstance(e, ProgressEvent)] == [lifecycle.LOADED]
        snap = await lifecycle.live(deps).snapshot(task_id, with_result=True, with_chunks=False)
        assert isinstance(snap.result, JobResult) and snap.result.content == task_id
    record = await task_store.get(deps.db, gone)
    assert record is not None and record.state == "REVOKED"


async def test_a_job_parked_by_its_owners_cap_is_no_lost_worker_when_it_runs(
    client: Client, make_settings: Callable[..., Settings], start_worker: Start
) -> None:
    """With a cap of one, all but one of a burst are parked at first: each of those starts took the
    run's mark in its first round and must give it back, or the run that follows would count a
    lost worker (and a poison job would fail after JOB_MAX_WORKER_LOSSES parkings)."""
    await start_worker(make_settings(jobs_running_free=1, worker_max_jobs=4))
    burst = [await submit(client, {"message": "x", "metadata": {"delay": 0.2}}) for _ in range(4)]
    final = [await finished(client, t, timeout=30) for t in burst]
    assert [(s["state"], s["tries"], s["worker_losses"]) for s in final] == [("SUCCESS", 1, 0)] * 4


@pytest.mark.sqlite_only
async def test_buffered_metrics_are_written_together_and_kept_through_a_redis_outage(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    redis = Redis.from_url(f"redis://127.0.0.1:{port}", socket_connect_timeout=0.5)
    server: EmbeddedRedis | None = None
    try:
        m = JobMetrics(redis, prefix=settings.redis_key_prefix)
        m.buffer(every=3600)  # nothing is written until a flush
        await m.event("started", "k")
        await m.event("succeeded", "k", duration=0.3)
        await m.flush()  # no Redis yet: kept for the next flush, not lost
        server = EmbeddedRedis(tmp_path / "redis", port=port, appendonly=False).start()
        assert await redis.hgetall(m.counters_key) == {}
        await m.event("succeeded", "k", duration=0.2)
        await m.close()  # a worker shutting down writes what it holds
        counters, hists = await m.snapshot()
        assert counters == {"jobs_started|k": 1, "jobs_succeeded|k": 2}
        assert hists["job_duration_seconds|k|count"] == 2
        assert hists["job_duration_seconds|k|sum"] == pytest.approx(0.5)
    finally:
        await redis.aclose()
        if server is not None:
            server.stop()
