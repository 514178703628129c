"""Workers that die or are stopped mid-job: kill -9 (the lease brings the job back on another worker),
a poison job (fails as worker_lost after JOB_MAX_WORKER_LOSSES), and SIGTERM (graceful drain, then
re-queue without using a retry; a second SIGTERM stops at once).

Each test runs its own stack (valkey, SQLite, uvicorn, `python -m agent_service worker` processes),
with JOB_LEASE_SECONDS=3.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import Stack, Worker, ts, words
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE = 3.0
RERUN_SLACK = 3.0  # a dead worker's job starts again within the lease plus this
CHUNK = re.compile(r"\s*\S+\s*")


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(workers: int = 1, **settings: str) -> Stack:
        stack = Stack(tmp_path / f"stack{len(stacks)}", JOB_LEASE_SECONDS=str(LEASE), **settings)
        stacks.append(stack)
        return stack.start(workers=workers)

    yield make
    for s in stacks:
        s.close()


def rerun_at(workers: list[Worker], task_id: str, after_try: int = 1) -> float | None:
    """Wall-clock time at which a later try of the task started on any of `workers`."""
    starts = [ts(e) for w in workers for e in w.events("job.started")
              if e.get("task_id") == task_id and e.get("try", 0) > after_try]
    return min(starts) if starts else None


def check_answer(status: dict[str, Any], message: str, stream: bool) -> None:
    result = status["result"]
    assert result is not None and result["content"] == message, status
    if stream:
        assert result["chunks"] == CHUNK.findall(message), status


def succeeded_on(workers: list[Worker]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in workers:
        for e in w.events("job.succeeded"):
            counts[e["task_id"]] = counts.get(e["task_id"], 0) + 1
    return counts


def test_kill_9_mid_job_rounds_rerun_within_the_lease(stack_factory: Any) -> None:
    stack: Stack = stack_factory(workers=2)
    message = words(8)
    plan: dict[str, bool] = {}  # task id -> stream?
    killed: dict[str, float] = {}  # task id -> latency of its re-run after the kill (s)
    for round_no in range(3):
        batch = {stack.submit(message, metadata={"delay": 0.5}): False for _ in range(3)}
        batch |= {stack.submit(message, stream=True, metadata={"delay": 0.5}): True for _ in range(3)}
        plan |= batch
        # mid-job: everything has started, and the streams have produced a couple of chunks
        stack.wait_state(batch, lambda s: s["state"] == "STARTED" and (s["kind"] != "stream" or s["progress"] >= 52),
                         timeout=10)
        alive = [w for w in stack.workers if w.alive()]
        assert len(alive) == 2, stack.logs()
        running = {w.pid: (w.task_ids("job.started") - w.task_ids("job.succeeded")) & set(batch) for w in alive}
        victim = max(alive, key=lambda w: (len(running[w.pid]), w is alive[round_no % 2]))
        on_victim = running[victim.pid]
        assert on_victim, f"round {round_no}: no job on either worker: {running}"
        killed_at = time.time()
        victim.signal(signal.SIGKILL)
        assert victim.wait_exit(5) == -signal.SIGKILL
        stack.start_worker(wait=False)  # a replacement, as a supervisor would start

        def rerun(on_victim: set[str] = on_victim) -> bool:
            return all(rerun_at(stack.workers, t) is not None for t in on_victim)

        wait_until(rerun, timeout=LEASE + RERUN_SLACK + 2, interval=0.05,
                   message=lambda r=round_no, v=on_victim: f"round {r}: not re-run: {v}\n{stack.logs()}")
        for t in on_victim:
            killed[t] = rerun_at(stack.workers, t) - killed_at  # type: ignore[operator]
        stack.wait_state(batch, timeout=20)
        for w in stack.workers:
            if w.alive():
                stack.wait_worker_ready(w)

    statuses = stack.wait_state(plan, timeout=20)
    done_count = succeeded_on(stack.workers)
    for task_id, stream in plan.items():
        s = statuses[task_id]
        assert s["state"] == "SUCCESS", s
        check_answer(s, message, stream)
        assert stack.terminal_events(task_id) == ["SUCCESS"], task_id
        assert done_count.get(task_id) == 1, (task_id, done_count.get(task_id))
        assert s["retries"] == 0, s  # a lost worker is not a retry
        if task_id in killed:
            assert s["worker_losses"] >= 1 and s["tries"] >= 2, s
        else:
            assert s["worker_losses"] == 0, s
    assert len(killed) >= 3
    assert max(killed.values()) <= LEASE + RERUN_SLACK, killed


def test_poison_job_fails_as_worker_lost_after_max_losses(stack_factory: Any) -> None:
    stack: Stack = stack_factory(workers=1, JOB_MAX_WORKER_LOSSES="3")
    task_id = stack.submit("poison", agent="poison")
    deaths = 0
    worker = stack.workers[0]
    deadline = time.monotonic() + 45
    while True:
        def settled(w: Worker = worker) -> bool:
            return not w.alive() or stack.status(task_id)["state"] == "FAILURE"

        wait_until(settled, timeout=max(1.0, deadline - time.monotonic()), interval=0.05,
                   message=lambda n=deaths: f"after {n} deaths: {stack.status(task_id)}\n{stack.logs()}")
        if worker.alive():
            break
        assert worker.wait_exit(1) == -signal.SIGKILL, worker.process.output()[-2000:]
        deaths += 1
        assert deaths <= 3, f"the poison job killed {deaths} workers: {stack.status(task_id)}"
        worker = stack.start_worker(wait=False)

    s = stack.status(task_id)
    assert (s["state"], s["error_code"], s["worker_losses"], s["retries"]) == ("FAILURE", "worker_lost", 3, 0), s
    assert deaths == 3
    assert stack.terminal_events(task_id) == ["FAILURE"]
    assert any(e.get("task_id") == task_id for e in worker.events("job.failed"))
    # the worker that ended it is healthy and takes the next job
    ok = stack.submit("still alive")
    assert stack.wait_state([ok], timeout=10)[ok]["state"] == "SUCCESS"
    assert worker.alive()


def test_sigterm_drains_short_jobs_and_requeues_long_ones(stack_factory: Any) -> None:
    drain = 3.0
    stack: Stack = stack_factory(workers=1, WORKER_DRAIN_SECONDS=str(drain))
    first = stack.workers[0]
    short_msg, long_msg = words(4, "s"), words(8, "l")
    short = {stack.submit(short_msg, metadata={"delay": 0.25}): False,
             stack.submit(short_msg, stream=True, metadata={"delay": 0.25}): True}
    long = {stack.submit(long_msg, metadata={"delay": 1.0}): False,
            stack.submit(long_msg, stream=True, metadata={"delay": 1.0}): True}
    stack.wait_state([*short, *long], {"STARTED"}, timeout=10)
    assert first.task_ids("job.started") == set(short) | set(long)
    second = stack.start_worker()  # ready before the drain starts; cannot take the running jobs

    sent = first.signal(signal.SIGTERM)
    rc = first.wait_exit(drain + 5)
    took = time.monotonic() - sent
    assert rc == 0, first.process.output()[-3000:]
    assert took <= drain + 2, f"exit {took:.2f}s after SIGTERM (drain {drain}s)"
    assert first.events("worker.draining")

    statuses = stack.wait_state([*short, *long], timeout=20)
    done_first, done_second = succeeded_on([first]), succeeded_on([second])
    for task_id, stream in short.items():
        s = statuses[task_id]
        assert s["state"] == "SUCCESS" and done_first.get(task_id) == 1 and task_id not in done_second, s
        check_answer(s, short_msg, stream)
    assert first.task_ids("job.requeued_on_shutdown") == set(long)
    for task_id, stream in long.items():
        s = statuses[task_id]
        assert s["state"] == "SUCCESS" and done_second.get(task_id) == 1 and task_id not in done_first, s
        check_answer(s, long_msg, stream)
        assert (s["retries"], s["worker_losses"]) == (0, 0), s  # a drained job used no retry
        assert stack.terminal_events(task_id) == ["SUCCESS"]


def test_second_sigterm_during_the_drain_stops_at_once(stack_factory: Any) -> None:
    stack: Stack = stack_factory(workers=1, WORKER_DRAIN_SECONDS="20")
    first = stack.workers[0]
    message = words(6)
    tasks = {stack.submit(message, metadata={"delay": 0.5}): False,
             stack.submit(message, stream=True, metadata={"delay": 0.5}): True}
    stack.wait_state(tasks, {"STARTED"}, timeout=10)
    second = stack.start_worker()

    first.signal(signal.SIGTERM)
    wait_until(lambda: first.events("worker.draining"), timeout=5, message=lambda: first.process.output()[-2000:])
    assert first.alive()  # draining: up to 20 s for the running jobs
    again = first.signal(signal.SIGTERM)
    first.wait_exit(5)
    took = time.monotonic() - again
    assert took <= 2.0, f"exit {took:.2f}s after the second SIGTERM"
    assert first.events("worker.stop_now")
    assert first.task_ids("job.requeued_on_shutdown") == set(tasks)

    statuses = stack.wait_state(tasks, timeout=20)
    done_second = succeeded_on([second])
    for task_id, stream in tasks.items():
        s = statuses[task_id]
        assert s["state"] == "SUCCESS" and done_second.get(task_id) == 1, s
        check_answer(s, message, stream)
        assert (s["retries"], s["worker_losses"]) == (0, 0), s
        assert stack.terminal_events(task_id) == ["SUCCESS"]
