"""Benchmark: a stock arq Worker next to the project's FastWorker, each on a fresh embedded Redis.

    .venv/bin/python scripts/bench_jobs.py [--jobs 500] [--concurrency 10] [--job-ms 25] [--runs 1]

For each worker, in one process and on one event loop:

* burst: N jobs (a coroutine that records its start time and sleeps --job-ms) are written in one
  MULTI/EXEC pipeline, the same keys `ArqRedis.enqueue_job` writes, so enqueueing costs the same
  for both and is not what is measured. Reports throughput (jobs/s from the enqueue to the last
  job's result being stored) and enqueue->start latency p50/p99.
* trickle: --trickle-jobs jobs enqueued one by one with `ArqRedis.enqueue_job` at --trickle-rate
  per second; reports enqueue->start latency p50/p99 of a worker that is mostly idle.
* idle: the worker with nothing to do for --idle-seconds; reports polls/s (ZRANGEBYSCORE calls
  seen by Redis) and CPU used by this process and by Redis, to catch a hot-spinning loop.

Both workers run with burst=False as a task, and are stopped once every job's result is stored:
arq's burst mode would make FastWorker return after each poll and sleep like the stock loop.
Both use the project's msgpack serializer and max_jobs=--concurrency; the stock Worker keeps
arq's default poll_delay (0.5 s), FastWorker gets the project's default (Settings.worker_poll_delay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.version import VERSION as ARQ_VERSION
from arq.worker import Worker, func

from agent_service.cli.embedded import EmbeddedRedis
from agent_service.config import Settings
from agent_service.kit.fast_worker import FastWorker
from agent_service.kit.serializer import deserialize, serialize

FUNCTION = "bench_job"
QUEUE = "arq:bench"
ARQ_POLL_DELAY = 0.5  # arq.worker.Worker's default, which plain arq keeps


# --- the job and what it records --------------------------------------------------------------


@dataclass
class Recorder:
    expected: int
    latencies_ms: list[float] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    starts: int = 0
    finished: set[str] = field(default_factory=set)
    last_finish: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def job_started(self, job_id: str, enqueued_at: float, now: float) -> None:
        self.starts += 1
        self.started.add(job_id)
        self.latencies_ms.append((now - enqueued_at) * 1000)

    def job_finished(self, job_id: str, now: float) -> None:
        self.finished.add(job_id)
        self.last_finish = max(self.last_finish, now)
        if len(self.finished) >= self.expected:
            self.done.set()


async def bench_job(ctx: dict[str, Any], enqueued_at: float) -> float:
    started = time.time()
    ctx["recorder"].job_started(ctx["job_id"], enqueued_at, started)
    await asyncio.sleep(ctx["job_seconds"])
    return started


async def after_job_end(ctx: dict[str, Any]) -> None:
    # runs once arq has stored the job's result
    ctx["recorder"].job_finished(ctx["job_id"], time.time())


# --- measurements ------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    jobs: int
    completed: int
    results_stored: int
    duplicate_starts: int
    failed_or_retried: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class IdleResult:
    seconds: float
    polls_per_s: float
    process_cpu_pct: float
    redis_cpu_pct: float


@dataclass
class WorkerResult:
    burst: ScenarioResult
    trickle: ScenarioResult
    idle: IdleResult


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))  # nearest rank
    return ordered[min(rank, len(ordered)) - 1]


async def count_results(client: ArqRedis, job_ids: list[str]) -> int:
    async with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(result_key_prefix + job_id)
        found = await pipe.execute()
    return sum(int(x) for x in found)


async def finish_scenario(
    client: ArqRedis, worker: Worker, rec: Recorder, job_ids: list[str], t0: float, wait_s: float, failed0: int
) -> ScenarioResult:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(rec.done.wait(), wait_s)
    end = rec.last_finish if rec.done.is_set() else time.time()
    return ScenarioResult(
        jobs=len(job_ids),
        completed=len(rec.finished),
        results_stored=await count_results(client, job_ids),
        duplicate_starts=rec.starts - len(rec.started),
        failed_or_retried=worker.jobs_failed + worker.jobs_retried - failed0,
        seconds=end - t0,
        p50_ms=percentile(rec.latencies_ms, 50),
        p99_ms=percentile(rec.latencies_ms, 99),
    )


async def run_burst(client: ArqRedis, worker: Worker, n: int, wait_s: float) -> ScenarioResult:
    rec = Recorder(expected=n)
    worker.ctx["recorder"] = rec
    failed0 = worker.jobs_failed + worker.jobs_retried
    job_ids = [f"burst-{i:06d}" for i in range(n)]
    t0 = time.time()
    enqueue_ms = int(t0 * 1000)
    async with client.pipeline(transaction=True) as pipe:
        for job_id in job_ids:
            job = serialize_job(FUNCTION, (t0,), {}, None, enqueue_ms, serializer=serialize)
            pipe.psetex(job_key_prefix + job_id, client.expires_extra_ms, job)
            pipe.zadd(QUEUE, {job_id: enqueue_ms})
        await pipe.execute()
    return await finish_scenario(client, worker, rec, job_ids, t0, wait_s, failed0)


async def run_trickle(client: ArqRedis, worker: Worker, n: int, rate: float, wait_s: float) -> ScenarioResult:
    rec = Recorder(expected=n)
    worker.ctx["recorder"] = rec
    failed0 = worker.jobs_failed + worker.jobs_retried
    job_ids = [f"trickle-{i:06d}" for i in range(n)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0 = time.time()
    for i, job_id in enumerate(job_ids):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await client.enqueue_job(FUNCTION, time.time(), _job_id=job_id, _queue_name=QUEUE)
    return await finish_scenario(client, worker, rec, job_ids, t0, wait_s, failed0)


async def redis_counters(client: ArqRedis) -> tuple[int, float]:
    stats = await client.info("commandstats")
    polls = int(stats.get("cmdstat_zrangebyscore", {}).get("calls", 0))
    cpu = await client.info("cpu")
    return polls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def measure_idle(client: ArqRedis, seconds: float) -> IdleResult:
    await asyncio.sleep(0.5)  # let the last results settle
    polls0, redis_cpu0 = await redis_counters(client)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    polls1, redis_cpu1 = await redis_counters(client)
    wall = wall1 - wall0
    return IdleResult(
        seconds=wall,
        polls_per_s=(polls1 - polls0) / wall,
        process_cpu_pct=100 * (cpu1 - cpu0) / wall,
        redis_cpu_pct=100 * (redis_cpu1 - redis_cpu0) / wall,
    )


def plain_capacity(args: argparse.Namespace) -> float:
    """A stock arq Worker's nominal start rate: max_jobs per poll_delay (0.5 s), for jobs longer than
    the time it takes to start max_jobs of them. (When starting is slower than the jobs, one poll keeps
    taking ids from its batch of queue_read_limit = max(5 * max_jobs, 100) as slots free, so it can do more.)"""
    return args.concurrency / (math.ceil(args.job_ms / 1000 / ARQ_POLL_DELAY) or 1) / ARQ_POLL_DELAY


async def bench_worker(worker_cls: type[Worker], poll_delay: float | None, args: argparse.Namespace) -> WorkerResult:
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        redis = EmbeddedRedis(Path(tmp), appendonly=False).start(stdout=subprocess.DEVNULL)
        try:
            settings = RedisSettings.from_dsn(redis.url)
            client = await create_pool(
                settings, job_serializer=serialize, job_deserializer=deserialize, default_queue_name=QUEUE
            )
            kwargs: dict[str, Any] = {} if poll_delay is None else {"poll_delay": poll_delay}
            worker = worker_cls(
                functions=[func(bench_job, name=FUNCTION)],
                queue_name=QUEUE,
                redis_settings=settings,
                max_jobs=args.concurrency,
                handle_signals=False,
                burst=False,
                job_serializer=serialize,
                job_deserializer=deserialize,
                after_job_end=after_job_end,
                ctx={"job_seconds": args.job_ms / 1000},
                **kwargs,
            )
            run_task = asyncio.create_task(worker.async_run())
            try:
                while not await client.exists(worker.health_check_key):  # written by the first poll
                    if run_task.done():
                        run_task.result()
                    await asyncio.sleep(0.01)
                # generous limits: a lost job shows up as a shortfall in the checks, not a hang
                cap = plain_capacity(args)
                burst_wait = 30 + 3 * args.jobs / cap
                burst = await run_burst(client, worker, args.jobs, burst_wait)
                trickle_wait = 30 + 3 * args.trickle_jobs / min(cap, args.trickle_rate)
                trickle = await run_trickle(client, worker, args.trickle_jobs, args.trickle_rate, trickle_wait)
                idle = await measure_idle(client, args.idle_seconds)
            finally:
                await worker.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await run_task
                await client.aclose()
        finally:
            redis.stop()
    return WorkerResult(burst=burst, trickle=trickle, idle=idle)


# --- report ------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(agent: float, plain: float) -> str:
    if plain == 0:
        return "n/a"
    r = agent / plain
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def print_report(
    args: argparse.Namespace, fast_poll: float, plain: list[WorkerResult], agent: list[WorkerResult], elapsed: float
) -> None:
    runs = f"median of {args.runs} runs" if args.runs > 1 else "1 run"
    print(
        f"arq {ARQ_VERSION}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"jobs={args.jobs}, concurrency={args.concurrency}, job={args.job_ms:g} ms; {runs}"
    )
    print(
        f"  plain arq:     arq.worker.Worker, poll_delay=0.5 s (arq default), max_jobs={args.concurrency}"
        f" (nominal cap {plain_capacity(args):g} jobs/s)"
    )
    print(
        f"  agent-service: FastWorker, poll_delay={fast_poll:g} s (Settings.worker_poll_delay), "
        f"max_jobs={args.concurrency}"
    )
    if args.trickle_rate > 0.8 * plain_capacity(args):
        print(
            f"  note: the trickle rate is above 80% of plain arq's {plain_capacity(args):g} jobs/s nominal cap, so its"
            " trickle latency includes queueing behind the cap, not only the poll delay"
        )
    print()

    rows: list[tuple[str, Callable[[WorkerResult], float], str] | str] = [
        f"Burst: {args.jobs} jobs enqueued at once",
        ("throughput (jobs/s)", lambda r: r.burst.throughput, "{:.1f}"),
        ("first enqueue -> last done (s)", lambda r: r.burst.seconds, "{:.2f}"),
        ("enqueue->start p50 (ms)", lambda r: r.burst.p50_ms, "{:.0f}"),
        ("enqueue->start p99 (ms)", lambda r: r.burst.p99_ms, "{:.0f}"),
        f"Trickle: {args.trickle_jobs} jobs at {args.trickle_rate:g}/s",
        ("enqueue->start p50 (ms)", lambda r: r.trickle.p50_ms, "{:.1f}"),
        ("enqueue->start p99 (ms)", lambda r: r.trickle.p99_ms, "{:.1f}"),
        f"Idle: {args.idle_seconds:g} s with no jobs, after the above",
        ("polls/s (ZRANGEBYSCORE)", lambda r: r.idle.polls_per_s, "{:.1f}"),
        ("CPU, benchmark process (%)", lambda r: r.idle.process_cpu_pct, "{:.1f}"),
        ("CPU, Redis server (%)", lambda r: r.idle.redis_cpu_pct, "{:.1f}"),
    ]
    width = 34
    print(f"{'':<{width}} {'plain arq':>12} {'agent-service':>14} {'ratio':>8}")
    summary: dict[str, tuple[float, float]] = {}
    section = ""
    for row in rows:
        if isinstance(row, str):
            section = row.split(":")[0]
            print(row)
            continue
        label, get, fmt = row
        p, a = median([get(r) for r in plain]), median([get(r) for r in agent])
        summary[f"{section} {label}"] = (p, a)
        print(f"  {label:<{width - 2}} {fmt.format(p):>12} {fmt.format(a):>14} {ratio(a, p):>8}")
    print()

    print("Checks (all runs): completed / results stored / duplicate starts / failed or retried")
    for name, results in (("plain arq", plain), ("agent-service", agent)):
        for scenario in ("burst", "trickle"):
            rs: list[ScenarioResult] = [getattr(r, scenario) for r in results]
            jobs = sum(s.jobs for s in rs)
            line = (
                f"{sum(s.completed for s in rs)}/{jobs} / {sum(s.results_stored for s in rs)}/{jobs} / "
                f"{sum(s.duplicate_starts for s in rs)} / {sum(s.failed_or_retried for s in rs)}"
            )
            ok = all(
                s.completed == s.jobs == s.results_stored and not s.duplicate_starts and not s.failed_or_retried
                for s in rs
            )
            print(f"  {name + ' ' + scenario:<{width - 2}} {line}  {'ok' if ok else 'PROBLEM'}")
    if args.runs > 1:
        for name, results in (("plain arq", plain), ("agent-service", agent)):
            per_run = ", ".join(f"{r.burst.throughput:.1f}" for r in results)
            print(f"  burst throughput per run, {name}: {per_run}")
    print()

    tp, ta = summary["Burst throughput (jobs/s)"]
    bp, ba = summary["Burst enqueue->start p50 (ms)"]
    ip, ia = summary["Trickle enqueue->start p50 (ms)"]
    jp, ja = summary["Trickle enqueue->start p99 (ms)"]
    print(f"throughput ratio (agent-service / plain arq): {ratio(ta, tp)}")
    print(f"burst enqueue->start p50 ratio: {ratio(ba, bp)} ({ratio(bp, ba)} lower)")
    print(f"trickle enqueue->start p50 ratio: {ratio(ia, ip)} ({ratio(ip, ia)} lower)")
    print(f"trickle enqueue->start p99 ratio: {ratio(ja, jp)} ({ratio(jp, ja)} lower)")
    print(f"total benchmark time: {elapsed:.1f} s")


async def main_async(args: argparse.Namespace) -> None:
    fast_poll = Settings().worker_poll_delay
    plain: list[WorkerResult] = []
    agent: list[WorkerResult] = []
    started = time.monotonic()
    for _ in range(args.runs):
        plain.append(await bench_worker(Worker, None, args))
        agent.append(await bench_worker(FastWorker, fast_poll, args))
    print_report(args, fast_poll, plain, agent, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=500, help="jobs in the burst scenario (default 500)")
    parser.add_argument("--concurrency", type=int, default=10, help="max_jobs of both workers (default 10)")
    parser.add_argument("--job-ms", type=float, default=25, help="how long each job sleeps, ms (default 25)")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians (default 1)")
    parser.add_argument("--trickle-jobs", type=int, default=100, help="jobs in the trickle scenario (default 100)")
    parser.add_argument(
        "--trickle-rate",
        type=float,
        default=15,
        help="trickle jobs per second (default 15: under plain arq's 20 jobs/s cap, so it stays idle-ish)",
    )
    parser.add_argument("--idle-seconds", type=float, default=2, help="idle measurement length (default 2)")
    args = parser.parse_args()
    for name in ("jobs", "concurrency", "runs", "trickle_jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.job_ms < 0 or args.trickle_rate <= 0 or args.idle_seconds <= 0:
        parser.error("--job-ms must be >= 0, --trickle-rate and --idle-seconds > 0")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
