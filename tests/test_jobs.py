"""Background jobs through a real arq worker: states, progress, retries, time limits, results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from agent_service.config import Settings
from agent_service.kit import serializer
from agent_service.tasks.policy import backoff_delay
from tests.support.apps import Client, app_client
from tests.support.logs import matching
from tests.support.tasks import finished, status, submit
from tests.support.waiting import wait_for

Start = Callable[[Settings], Any]


async def test_queued_task_is_pending_until_a_worker_runs_it(client: Client, settings: Settings, start_worker: Start):
    task_id = await submit(client, {"message": "hello async world", "session_id": "s1"})
    s = await status(client, task_id)
    assert (s["state"], s["status"], s["progress"], s["result"]) == ("PENDING", "queued", 0, None)
    await start_worker(settings)
    s = await finished(client, task_id)
    assert (s["state"], s["status"], s["progress"], s["error"], s["tries"]) == ("SUCCESS", "completed", 100, None, 1)
    result = s["result"]
    assert result["content"] == "hello async world" and result["agent_id"] == "echo"
    assert result["session_id"] == "s1" and result["started_at"] <= result["completed_at"]


async def test_streaming_job_reports_progress_while_running(client: Client, settings: Settings, start_worker: Start):
    await start_worker(settings)
    words = " ".join(f"w{i}" for i in range(40))
    task_id = await submit(client, {"message": words, "stream": True, "metadata": {"delay": 0.05}})
    seen: set[int] = set()

    async def mid_run() -> bool:
        s = await status(client, task_id)
        if s["state"] == "STARTED":
            seen.add(s["progress"])
        return any(40 < p < 100 for p in seen)

    await wait_for(mid_run, timeout=10)
    s = await finished(client, task_id)
    assert s["state"] == "SUCCESS" and s["progress"] == 100
    assert s["result"]["chunks"] == [f"w{i} " for i in range(39)] + ["w39"]
    assert s["result"]["content"] == words and "incomplete" not in s["result"]


async def test_transient_failures_are_retried_then_succeed(client: Client, settings: Settings, start_worker: Start):
    await start_worker(settings)
    task_id = await submit(client, {"message": "flaky", "metadata": {"fail": "transient", "fail_times": 2}})
    states: list[str] = []

    async def record() -> dict[str, Any] | None:
        s = await status(client, task_id)
        if not states or states[-1] != s["state"]:
            states.append(s["state"])
        return s if s["state"] == "SUCCESS" else None

    s = await wait_for(record, timeout=15, interval=0.005)
    assert "RETRY" in states and s["tries"] == 3 and s["result"]["content"] == "flaky"


async def test_retries_are_bounded_by_max_retries(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    settings = make_settings(job_max_retries=2)
    await start_worker(settings)
    task_id = await submit(client, {"message": "x", "metadata": {"fail": "transient"}})
    s = await finished(client, task_id)
    assert s["state"] == "FAILURE" and s["tries"] == 3
    assert s["error"].startswith("Gave up after 3 attempts") and "transient" in s["error"]


async def test_permanent_failure_fails_at_once(client: Client, settings: Settings, start_worker: Start):
    await start_worker(settings)
    task_id = await submit(client, {"message": "x", "metadata": {"fail": "permanent"}})
    s = await finished(client, task_id)
    assert (s["state"], s["status"], s["tries"]) == ("FAILURE", "failed", 1)
    assert s["error"] == "echo: simulated permanent failure" and s["result"] is None


async def test_soft_limit_keeps_partial_stream_output(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    settings = make_settings(stream_job_soft_time_limit=0.5, stream_job_time_limit=10)
    await start_worker(settings)
    task_id = await submit(client, {"message": " ".join("abcdefghijklmnopqrstuvwxyz"), "stream": True,
                                    "metadata": {"delay": 0.1}})
    s = await finished(client, task_id)
    assert s["state"] == "SUCCESS"
    result = s["result"]
    assert result["incomplete"] is True and 0 < len(result["chunks"]) < 26
    assert result["content"] == "".join(result["chunks"])


async def test_soft_limit_fails_invoke_job_with_clear_error(client: Client, make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    settings = make_settings(job_soft_time_limit=0.3, job_time_limit=10)
    await start_worker(settings)
    task_id = await submit(client, {"message": "a b c d", "metadata": {"delay": 0.5}})
    s = await finished(client, task_id)
    assert s["state"] == "FAILURE" and s["error"] == "Soft time limit of 0.3s exceeded."


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    assert backoff_delay(1, base=1, cap=600, rng=lambda: 1.0) == 1
    assert backoff_delay(4, base=1, cap=600, rng=lambda: 1.0) == 8
    assert backoff_delay(30, base=1, cap=600, rng=lambda: 1.0) == 600
    assert backoff_delay(3, base=1, cap=600, rng=lambda: 0.0) == 0
    assert backoff_delay(3, base=1, cap=600, rng=lambda: 0.5) == 2


def test_serializer_is_msgpack_and_carries_exceptions_without_pickle() -> None:
    data = serializer.serialize({"r": ValueError("boom"), "a": [{"x": 1}]})
    assert b"pickle" not in data and not data.startswith(b"\x80")  # pickle protocol marker
    assert msgspec.msgpack.decode(data) == {"r": {"error": "ValueError", "message": "boom"}, "a": [{"x": 1}]}
    with pytest.raises(TypeError):
        serializer.serialize({"r": object()})


async def test_request_id_is_carried_into_the_job(client: Client, settings: Settings, start_worker: Start, capsys):  # type: ignore[no-untyped-def]
    await start_worker(settings)
    resp = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "trace me"},
                             headers={"X-Request-ID": "trace-42"})
    s = await finished(client, resp.json()["task_id"])
    assert s["state"] == "SUCCESS"
    lines = matching(capsys.readouterr().out, event="job.succeeded")
    assert lines and all(ln.get("request_id") == "trace-42" for ln in lines)


async def test_hard_limit_is_enforced_by_arq(make_settings, start_worker: Start):  # type: ignore[no-untyped-def]
    settings = make_settings(agents="tests.support.agents:StubbornAgent", job_soft_time_limit=0.2, job_time_limit=1.0)
    await start_worker(settings)
    async with app_client(settings) as client:
        task_id = await submit(client, {"message": "x"}, agent="stubborn")
        s = await finished(client, task_id)
    assert s["state"] == "FAILURE" and s["error"] == "Hard time limit of 1s exceeded; the job was stopped."
