"""tasks/lifecycle.py, the one writer of task state: its invariants, progress, and the defects the
restructuring fixed (streaming progress stuck at 40 %, a failed task's progress differing between
detail and list, a cancel answer that said nothing)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.constants import result_key_prefix

from agent_service.config import Settings
from agent_service.kit.deps import Deps, open_deps
from agent_service.tasks import lifecycle
from agent_service.tasks import repository as task_store
from agent_service.tasks.lifecycle import Run, Submission, progress_of, stream_progress
from agent_service.tasks.schemas import ChunkEvent, JobResult, StateEvent
from agent_service.tasks.service import get_status
from tests.support.apps import Client
from tests.support.tasks import finished, submit
from tests.support.waiting import wait_for


@pytest.fixture
async def deps(settings: Settings) -> AsyncIterator[Deps]:
    d = await open_deps(settings)
    yield d
    await d.aclose()


async def _new_task(deps: Deps, *, kind: str = "stream") -> str:
    task_id = uuid.uuid4().hex
    # a function no worker serves: the job sits in the queue while the test drives the lifecycle
    await lifecycle.submit(deps, Submission(task_id=task_id, kind=kind, function="nobody_runs_this",
                                            payload={"task_id": task_id}, agent_id="echo", owner_id="u1",
                                            request_id=None))
    return task_id


async def _events(deps: Deps, task_id: str) -> list[Any]:
    return [e for _, e in await lifecycle.live(deps).read(task_id)]


def test_progress_is_one_function_of_state_and_live_progress() -> None:
    assert progress_of("PENDING", 55) == 0
    assert progress_of("SUCCESS", None) == 100
    assert progress_of("STARTED", None) == 0
    assert progress_of("FAILURE", 40) == progress_of("RETRY", 40) == progress_of("REVOKED", 40) == 40


def test_stream_progress_moves_visibly_with_or_without_a_size() -> None:
    unknown = [stream_progress(n, None) for n in range(1, 60)]
    assert unknown == sorted(unknown) and unknown[0] == 44 and unknown[4] == 56 and unknown[-1] < 90
    assert [stream_progress(n, 4) for n in range(1, 5)] == [52, 65, 77, 90]


async def test_the_first_terminal_state_wins_and_a_losing_finish_publishes_nothing(deps: Deps) -> None:
    task_id = await _new_task(deps)
    assert await lifecycle.start(deps, task_id, attempt=1)
    run = Run(deps, task_id, 1)
    await run.chunk("partial ")
    assert await run.revoke(None)
    now = deps.clock()
    late = JobResult(content="complete", metadata={}, agent_id="echo", session_id=None, started_at=now,
                     completed_at=now)
    assert not await run.succeed(late)  # a cancelled task never later reads SUCCESS
    assert not await lifecycle.fail(deps, task_id, "too late")
    record = await task_store.get(deps.db, task_id)
    assert record is not None and record.state == "REVOKED"
    states = [e.state for e in await _events(deps, task_id) if isinstance(e, StateEvent)]
    assert states == ["PENDING", "STARTED", "REVOKED"]  # one event per real change, none for the losers
    assert not await lifecycle.start(deps, task_id, attempt=2)  # a finished task is not re-opened


async def test_a_result_is_stored_before_success_is_visible(deps: Deps) -> None:
    task_id = await _new_task(deps, kind="invoke")
    await lifecycle.start(deps, task_id, attempt=1)
    now = deps.clock()
    result = JobResult(content="done", metadata={}, agent_id="echo", session_id=None, started_at=now,
                       completed_at=now)
    assert await lifecycle.succeed(deps, task_id, result, attempt=1)
    status = await get_status(deps, task_id, owner_id="u1")
    assert status.state == "SUCCESS" and isinstance(status.result, JobResult) and status.result.content == "done"
    assert status.progress == 100


async def test_a_rerun_marks_its_events_and_the_result_keeps_only_its_chunks(deps: Deps) -> None:
    task_id = await _new_task(deps)
    await lifecycle.start(deps, task_id, attempt=1)
    first = Run(deps, task_id, 1)
    for word in ("lost ", "answer "):
        await first.chunk(word)
    await lifecycle.start(deps, task_id, attempt=2)  # the worker died; the job runs again
    second = Run(deps, task_id, 2)
    second.expected = 3
    for word in ("the ", "real ", "one"):
        await second.chunk(word)
    now = deps.clock()
    await second.succeed(JobResult(content="the real one", metadata={}, agent_id="echo", session_id=None,
                                   started_at=now, completed_at=now))
    chunks = [e for e in await _events(deps, task_id) if isinstance(e, ChunkEvent)]
    assert [(c.attempt, c.index) for c in chunks] == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    assert [c.progress for c in chunks if c.attempt == 2] == [56, 73, 90]
    status = await get_status(deps, task_id, owner_id="u1")
    assert isinstance(status.result, JobResult) and status.result.chunks == ["the ", "real ", "one"]


async def test_an_event_is_published_only_when_progress_moves(deps: Deps) -> None:
    task_id = await _new_task(deps, kind="invoke")
    await lifecycle.start(deps, task_id, attempt=1)
    run = Run(deps, task_id, 1)
    for value in (20, 20, 10, 40, 40):
        await run.advance(value)
    progress = [e.progress for e in await _events(deps, task_id) if type(e).__name__ == "ProgressEvent"]
    assert progress == [20, 40]


async def test_a_streaming_task_shows_moving_progress_and_stores_each_fact_once(
    client: Client, settings: Settings, start_worker: Callable[..., Any]
) -> None:
    await start_worker(settings)
    words = " ".join(f"w{i}" for i in range(8))
    task_id = await submit(client, {"message": words, "stream": True, "metadata": {"delay": 0.05}})
    seen: list[int] = []

    async def progressed() -> bool:
        s = (await client.get(f"/api/v1/agents/tasks/{task_id}")).json()
        if s["state"] == "STARTED" and (not seen or s["progress"] != seen[-1]):
            seen.append(s["progress"])
        return s["state"] == "SUCCESS"

    await wait_for(progressed, timeout=15, interval=0.01)
    assert len([p for p in seen if 40 < p < 100]) >= 2, seen  # it moved while the chunks arrived
    assert seen == sorted(seen)
    final = await finished(client, task_id)
    assert final["result"]["chunks"] == [f"w{i} " for i in range(7)] + ["w7"]
    events = [line for line in (await client.get(f"/api/v1/agents/tasks/{task_id}/events")).text.splitlines()
              if line.startswith("data:")]
    assert max(int(e.split('"progress":')[1].split(",")[0].rstrip("}")) for e in events if '"chunk"' in e) == 90
    redis = client.app.state.deps.redis
    prefix = f"{settings.redis_key_prefix}task:{task_id}:"
    keys = sorted(k.decode().removeprefix(prefix) for k in await redis.keys(prefix + "*"))
    assert keys == ["events", "live", "result"]  # no chunk list: a chunk is one event-stream entry
    assert not await redis.exists(result_key_prefix + task_id)  # arq keeps no second copy


async def test_a_failed_task_shows_one_progress_in_detail_and_list(
    client: Client, settings: Settings, start_worker: Callable[..., Any]
) -> None:
    await start_worker(settings)
    task_id = await submit(client, {"message": "x", "metadata": {"fail": "permanent"}})
    detail = await finished(client, task_id)
    items = (await client.get("/api/v1/agents/tasks")).json()["items"]
    listed = next(t for t in items if t["task_id"] == task_id)
    assert detail["state"] == "FAILURE" and listed["progress"] == detail["progress"] == 40


async def test_cancel_says_what_happened(client: Client, settings: Settings,
                                         start_worker: Callable[..., Any]) -> None:
    queued = await submit(client, {"message": "later", "delay_seconds": 3600})
    resp = await client.post(f"/api/v1/agents/tasks/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "REVOKED"  # at once: it never starts
    await start_worker(settings)
    running = await submit(client, {"message": "one two three four five six", "stream": True,
                                    "metadata": {"delay": 0.3}})

    async def started() -> bool:
        return (await client.get(f"/api/v1/agents/tasks/{running}")).json()["state"] == "STARTED"

    await wait_for(started, timeout=10)
    resp = await client.post(f"/api/v1/agents/tasks/{running}/cancel")
    assert resp.status_code == 202 and resp.json()["state"] == "STARTED"  # stopping: the state it is in
    final = await finished(client, running)
    assert final["state"] == "REVOKED" and final["result"]["incomplete"] is True


async def test_a_job_without_its_record_is_counted_never_silent(
    client: Client, settings: Settings, start_worker: Callable[..., Any]
) -> None:
    """A queue entry whose durable record this deployment cannot find (another machine's SQLite,
    a record lost with a restore): a WARNING with the task id and a metric, never a silent skip."""
    deps = client.app.state.deps
    task_id = uuid.uuid4().hex
    job = {"task_id": task_id, "agent_id": "echo", "message": "nobody knows me"}
    assert await lifecycle.queue(deps).enqueue("invoke_agent_async", job, job_id=task_id)
    await start_worker(settings)

    async def counted() -> bool:
        text = (await client.get("/metrics")).text
        return 'agent_jobs_orphaned_total{task_kind="invoke_agent_async"} 1.0' in text

    await wait_for(counted, timeout=15)
    assert await task_store.get(deps.db, task_id) is None
