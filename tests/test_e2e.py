"""The seed's flow over real HTTP: uvicorn on 127.0.0.1 plus a worker process, real Redis and SQLite."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.logs import logged
from tests.support.processes import Live
from tests.support.sse import parse_sse
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "AGENTS": "tests.support.agents:EndlessAgent", "STREAM_JOB_SOFT_TIME_LIMIT": "1.5",
            "STREAM_JOB_TIME_LIMIT": "10"}


def poll(live: Live, task_id: str, until: set[str], timeout: float = 20) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = httpx.get(f"{live.base}/api/v1/agents/tasks/{task_id}", headers=live.headers, timeout=5).json()
        seen.append(s)
        if s["state"] in until:
            return s, seen
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {until}; last: {seen[-1:]}")


def submit(live: Live, agent: str, body: dict[str, Any]) -> str:
    resp = httpx.post(f"{live.base}/api/v1/agents/{agent}/invoke-async", json=body, headers=live.headers, timeout=5)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == resp.json()["status_url"]
    return str(resp.json()["task_id"])


def test_seed_flow_queue_poll_success(live_service: Live) -> None:
    live = live_service
    task_id = submit(live, "echo", {"message": "Hello from the queue"})
    s, _ = poll(live, task_id, {"SUCCESS", "FAILURE"})
    assert (s["state"], s["status"], s["progress"]) == ("SUCCESS", "completed", 100)
    assert s["result"]["content"] == "Hello from the queue"
    assert logged(live.worker.output(), task_id=task_id)


def test_progress_is_seen_mid_run_on_a_slow_streaming_job(live_service: Live) -> None:
    live = live_service
    message = " ".join(f"w{i}" for i in range(30))
    task_id = submit(live, "echo", {"message": message, "stream": True, "metadata": {"delay": 0.04}})
    s, seen = poll(live, task_id, {"SUCCESS", "FAILURE"})
    assert s["state"] == "SUCCESS" and s["result"]["content"] == message
    mid = [x["progress"] for x in seen if x["state"] == "STARTED"]
    assert any(0 < p < 100 for p in mid), mid


def test_transient_twice_then_success(live_service: Live) -> None:
    live = live_service
    task_id = submit(live, "echo", {"message": "flaky", "metadata": {"fail": "transient", "fail_times": 2}})
    s, _ = poll(live, task_id, {"SUCCESS", "FAILURE"})
    assert s["state"] == "SUCCESS" and s["tries"] == 3
    # the two retries are in the task's history (polling may well miss a state that lasts ms)
    history = httpx.get(f"{live.base}/api/v1/agents/tasks/{task_id}/events", headers=live.headers, timeout=10)
    retries = [e.data for e in parse_sse(history.text) if e.data.get("state") == "RETRY"]
    assert len(retries) == 2 and all(r["error"] and r["retry_at"] for r in retries), retries


def test_soft_timeout_yields_partial_result(live_service: Live) -> None:
    live = live_service
    task_id = submit(live, "endless", {"message": "go", "stream": True})
    s, _ = poll(live, task_id, {"SUCCESS", "FAILURE"})
    result = s["result"]
    assert s["state"] == "SUCCESS" and result["incomplete"] is True
    assert result["chunks"] and result["content"] == "".join(result["chunks"])
    assert result["chunks"][0] == "tick0 "


def test_sse_stream_over_http(live_service: Live) -> None:
    live = live_service
    with httpx.stream("POST", f"{live.base}/api/v1/agents/echo/stream", json={"message": "one two three"},
                      headers=live.headers) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    blocks = [b for b in text.split("\n\n") if b]
    assert [b.split("\n")[0] for b in blocks] == ["event: chunk"] * 3 + ["event: done"]
    assert 'data: {"type":"chunk","index":0,"content":"one "}' in blocks[0] and "id: 0" in blocks[0]


def test_client_disconnect_stops_the_agent(live_service: Live, tmp_path: Path) -> None:
    live = live_service
    marker = tmp_path / "closed.txt"
    body = {"message": "go", "metadata": {"marker": str(marker)}}
    with httpx.stream("POST", f"{live.base}/api/v1/agents/endless/stream", json=body, headers=live.headers,
                      timeout=5) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "event: chunk"
    wait_until(marker.exists, timeout=5, interval=0.05,
               message=lambda: "the agent kept streaming after the client left")
    assert marker.read_text().startswith("closed after")


def test_request_id_reaches_the_worker_log(live_service: Live) -> None:
    live = live_service
    resp = httpx.post(f"{live.base}/api/v1/agents/echo/invoke-async", json={"message": "hi"},
                      headers={**live.headers, "X-Request-ID": "e2e-trace-1"})
    assert resp.headers["x-request-id"] == "e2e-trace-1"
    poll(live, resp.json()["task_id"], {"SUCCESS"})
    assert logged(live.web.output(), request_id="e2e-trace-1")
    assert logged(live.worker.output(), event="job.succeeded", request_id="e2e-trace-1")
