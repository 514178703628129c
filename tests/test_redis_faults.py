"""Redis goes away under a steady load of submissions and comes back (same port, its AOF replayed):
the API answers 503 (problem+json, Retry-After), never 500, while it is down and 202 after; status
reads answer from SQL (200, live false); the workers ride it out without a restart; no accepted task
is lost, stuck, or failed because of the outage.

Each test runs its own stack: valkey with appendonly=yes, SQLite, uvicorn and
`python -m agent_service worker` processes, JOB_LEASE_SECONDS=3.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.constants import in_progress_key_prefix

from agent_service.kit.fast_worker import BACKOFF_MAX
from tests.support.faults import FINISHED, Load, Stack, ts, words
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE = 3.0
MESSAGE = "steady load here"
RECOVERY = 12.0  # after the restart: 202 again, and the workers polling, within this
SETTLE = 20.0  # after the restart, every accepted task finishes within this
STALL = ("a job that arq had just marked in progress (PSETEX of its longest time limit + 10 s = 910 s) when Redis "
         "went away, before tasks/jobs.py started hold_lease, keeps that mark: after the restart no worker takes it "
         "for ~15 min and the sweeper skips it (its job key exists), so the task stays PENDING")


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[[int], Stack]]:
    stacks: list[Stack] = []

    def make(workers: int = 2) -> Stack:
        s = Stack(tmp_path / f"stack{len(stacks)}", JOB_LEASE_SECONDS=str(LEASE))
        stacks.append(s)
        return s.start(workers=workers)

    yield make
    for s in stacks:
        s.close()


@pytest.fixture
def stack(make_stack: Callable[[int], Stack]) -> Stack:
    return make_stack(2)


def read_statuses(stack: Stack, task_ids: list[str], until: threading.Event) -> list[tuple[int, dict[str, Any]]]:
    """Status reads of known tasks, round robin, until `until` is set (the outage's length)."""
    reads: list[tuple[int, dict[str, Any]]] = []
    i = 0
    while not until.is_set():
        try:
            resp = stack.get_status(task_ids[i % len(task_ids)], timeout=5)
        except httpx.HTTPError as exc:
            reads.append((0, {"error": repr(exc)}))
        else:
            is_json = resp.headers.get("content-type", "").endswith("json")
            reads.append((resp.status_code, resp.json() if is_json else {"text": resp.text[:300]}))
        i += 1
        until.wait(0.1)
    return reads


def stalled(stack: Stack, task_ids: list[str]) -> dict[str, int]:
    """Unfinished tasks whose arq in-progress mark outlives the lease (ms left): the STALL bug."""
    with stack.redis_client() as r:
        ttls = {t: r.pttl(in_progress_key_prefix + t) for t in task_ids if stack.status(t)["state"] not in FINISHED}
    return {t: ms for t, ms in ttls.items() if ms > LEASE * 1000}


def settle(stack: Stack, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every task finished within SETTLE s of the restart (no in-progress mark outlives the lease)."""
    try:
        return stack.wait_state(task_ids, timeout=SETTLE)
    except AssertionError:
        raise AssertionError(f"{STALL}; stalled (in-progress ms left): {stalled(stack, task_ids)}") from None


def outage(stack: Stack, seconds: float, sig: int = signal.SIGTERM) -> tuple[float, float]:
    """Redis down for `seconds` (paced by an event, nothing is asserted meanwhile), then back:
    (wall time it went, wall time it was back)."""
    stack.stop_redis(sig)
    down = time.time()
    threading.Event().wait(seconds)
    stack.start_redis()
    return down, time.time()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("seconds", "sig"), [(2.0, signal.SIGTERM), (20.0, signal.SIGKILL)],
                         ids=["2s-sigterm", "20s-sigkill"])
def test_redis_outage_under_load(stack: Stack, seconds: float, sig: int) -> None:
    pids = [w.pid for w in stack.workers]
    with Load(stack, every=0.1, message=MESSAGE) as load:
        wait_until(lambda: len(load.accepted) >= 10, timeout=10, message=lambda: repr(load.answers[-3:]))
        before = list(load.accepted)
        stack.stop_redis(sig)
        down_at = time.monotonic()
        outage_over = threading.Event()
        timer = threading.Timer(seconds, outage_over.set)
        timer.start()
        reads = read_statuses(stack, before, outage_over)
        stack.start_redis()
        up_at, up_wall = time.monotonic(), time.time()
        wait_until(lambda: load.since(up_at, 202), timeout=RECOVERY,
                   message=lambda: f"no 202 after the restart: {load.since(up_at)[-3:]}\n{stack.logs()}")
        first_202 = load.since(up_at, 202)[0].sent - up_at
        # each worker polls again after its backoff step (capped at 5 s) and says so once
        wait_until(lambda: all(w.events("worker.redis_back") for w in stack.workers), timeout=RECOVERY,
                   message=stack.logs)
        back_wall = time.time()
        wait_until(lambda: len(load.since(up_at, 202)) >= 10, timeout=RECOVERY)
    accepted = list(load.accepted)

    # the API while Redis was down: 503 problem+json with Retry-After, never a 500 or a dropped connection
    during = [a for a in load.answers if down_at <= a.sent < up_at]
    assert {a.code for a in load.answers} <= {202, 503}, [a for a in load.answers if a.code not in (202, 503)][:3]
    refused = [a for a in during if a.code == 503]
    assert refused, f"nothing refused during a {seconds}s outage: {during[:3]}"
    assert all(a.content_type.startswith("application/problem+json") and a.retry_after for a in refused), refused[:3]
    assert first_202 <= RECOVERY
    # status reads during the outage: from SQL, flagged as not live
    assert reads and all(code == 200 for code, _ in reads), [r for r in reads if r[0] != 200][:3]
    assert all(body["live"] is False for _, body in reads), [b for _, b in reads if b["live"] is not False][:3]

    # the workers rode it out: same processes, one line when Redis went, one when it came back
    assert [w.pid for w in stack.workers if w.alive()] == pids, stack.logs()
    # polling again within one backoff step, or two: a job task that failed during the outage is
    # reaped (its exception re-raised) in the first good poll, which then counts as one more failure
    for w in stack.workers:
        assert len(w.events("worker.redis_unavailable")) == 1, w.process.output()[-3000:]
        assert len(w.events("worker.redis_back")) == 1, w.process.output()[-3000:]
        assert ts(w.events("worker.redis_back")[0]) - up_wall <= 2 * BACKOFF_MAX + 1
    assert back_wall - up_wall <= 2 * BACKOFF_MAX + 1
    assert set(accepted) - set(before), "no task accepted after the restart"

    # every accepted task ends once, successfully: none lost, stuck or failed by the outage
    statuses = settle(stack, accepted)
    bad = {t: s for t, s in statuses.items() if s["state"] != "SUCCESS" or s["result"]["content"] != MESSAGE}
    assert not bad, bad
    # (a task that finished as Redis went may lack its SUCCESS event: its follower ends from SQL)
    doubled = {t: e for t in accepted if len(e := stack.terminal_events(t)) > 1 or set(e) - {"SUCCESS"}}
    assert not doubled, doubled
    assert all(s["retries"] == 0 for s in statuses.values())


def test_jobs_started_as_redis_dies_run_again_within_the_lease(make_stack: Callable[[int], Stack]) -> None:
    stack = make_stack(0)
    ids = [stack.submit("burst job", metadata={"delay": 0.1}) for _ in range(100)]
    stack.start_worker(wait=False)
    with stack.redis_client() as r:
        # the worker is starting the backlog: some jobs are marked in progress, their leases not yet taken
        wait_until(lambda: sum(1 for _ in r.scan_iter(match=in_progress_key_prefix + "*", count=1000)) >= 3,
                   timeout=20, interval=0.002, message=stack.logs)
    stack.stop_redis(signal.SIGKILL)
    stack.start_redis()
    try:
        statuses = stack.wait_state(ids, timeout=3 * LEASE + 5)
    except AssertionError:
        raise AssertionError(f"stalled (in-progress ms left): {stalled(stack, ids)}") from None
    assert all(s["state"] == "SUCCESS" for s in statuses.values())


def test_a_redis_outage_mid_job_is_not_a_worker_loss(stack: Stack) -> None:
    message = words(8)
    task_id = stack.submit(message, stream=True, metadata={"delay": 0.5})
    stack.wait_state([task_id], lambda s: s["state"] == "STARTED" and s["progress"] >= 52, timeout=10)
    outage(stack, 2.0)
    s = stack.wait_state([task_id], timeout=30)[task_id]
    assert s["state"] == "SUCCESS" and s["result"]["content"] == message, s
    assert s["retries"] == 0, s
    assert any(e.get("task_id") == task_id for w in stack.workers for e in w.events("job.store_unavailable"))
    assert s["worker_losses"] == 0, s  # observed: 1, with "job.worker_lost" logged for try 2


def test_an_idle_worker_logs_one_line_per_outage(stack: Stack) -> None:
    down, up = outage(stack, 5.0)
    wait_until(lambda: all(w.events("worker.redis_back") for w in stack.workers), timeout=RECOVERY,
               message=stack.logs)
    for w in stack.workers:
        # the worker may notice a moment before stop_redis() returns: count from a second earlier
        during = [e for e in w.events() if down - 1.0 <= ts(e) < up and e.get("level") in ("warning", "error")
                  and e["event"] != "worker.redis_back"]
        assert [e["event"] for e in during] == ["worker.redis_unavailable"], during
