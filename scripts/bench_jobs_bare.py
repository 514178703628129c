"""The anchors of scripts/bench_jobs.py: plain arq's and SAQ's bare loops on jobs that only sleep,
and the measurements every column shares (drain, wake-up, idle). Imported by bench_jobs.py.

Each anchor runs in this process on a fresh embedded valkey, with the project's msgpack
serializer for arq (SAQ keeps its own JSON). Nothing here is part of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.worker import Worker, func
from redis.asyncio import Redis

from agent_service.cli.embedded import EmbeddedRedis
from agent_service.kit.serializer import deserialize, serialize

ARQ_QUEUE = "arq:bench"
# commands an idle loop sends to find work (arq's ZRANGEBYSCORE, SAQ's BLMOVE and schedule script,
# our wake-up BLPOP and claim script); heartbeats and the like are counted in "commands/s"
POLL_COMMANDS = ("zrangebyscore", "blpop", "brpop", "blmove", "brpoplpush", "evalsha", "eval", "fcall")


# --- what every column reports -------------------------------------------------------------------


@dataclass
class Drain:
    jobs: int
    done: int
    seconds: float  # first job start -> last job end
    run_ms: float = float("nan")  # a job's own start -> end, median
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Wake:
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)


@dataclass
class Idle:
    cpu_pct: float
    polls_per_s: float
    commands_per_s: float
    rss_mb: float = float("nan")  # the worker process's resident memory (a child process only)


@dataclass
class Column:
    drain: Drain
    wake: Wake
    idle: Idle


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))  # nearest rank
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def proc_cpu_seconds(pid: int | None) -> float:
    """CPU time of a process (this one with None), user + system."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_idle(url: str, seconds: float, pid: int | None = None) -> Idle:
    """CPU of the idle worker (process `pid`, or this one) and the commands the Redis at `url`
    receives over `seconds` (MONITOR: those the clients send, not those run inside their scripts)."""
    sent: dict[str, int] = {}
    redis = Redis.from_url(url)  # no read timeout: MONITOR waits as long as the worker is quiet

    async def count() -> None:
        async with redis.monitor() as monitor:
            async for cmd in monitor.listen():
                if cmd.get("client_type") != "lua":
                    name = str(cmd.get("command", "")).split(" ", 1)[0].strip('"').lower()
                    sent[name] = sent.get(name, 0) + 1

    counting = asyncio.create_task(count())
    await asyncio.sleep(0.2)  # MONITOR is on
    sent.clear()
    cpu0, wall0 = proc_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wall1 = proc_cpu_seconds(pid), time.monotonic()
    counting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await counting
    await redis.aclose()
    wall = wall1 - wall0
    if os.environ.get("BENCH_DEBUG"):
        print("idle commands:", sent)
    polls = sum(n for k, n in sent.items() if k in POLL_COMMANDS)
    return Idle(cpu_pct=100 * (cpu1 - cpu0) / wall, polls_per_s=polls / wall, commands_per_s=sum(sent.values()) / wall,
                rss_mb=rss_mb(pid))


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def trickle(enqueue: Callable[[int], Awaitable[float]], started: Callable[[int], Awaitable[float]],
                  samples: int) -> Wake:
    """`samples` jobs one at a time on an idle worker: enqueue (returns the time just before the
    enqueue call) -> the job's start (returns the worker's wall-clock start time), in ms."""
    out: list[float] = []
    for i in range(samples):
        await asyncio.sleep(0.02 + 0.01 * (i % 3))  # the worker is idle (blocked) when the job comes
        t0 = await enqueue(i)
        out.append((await started(i) - t0) * 1000)
    return Wake(out)


# --- the bare job both anchors run ---------------------------------------------------------------


class Marks:
    """Start and end times of the bare jobs, and an event per job start (the wake-up waits on it)."""

    def __init__(self) -> None:
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.duplicates = 0
        self.changed = asyncio.Event()

    def start(self, job_id: str) -> None:
        if job_id in self.starts:
            self.duplicates += 1
        self.starts[job_id] = time.time()
        self.changed.set()

    def end(self, job_id: str) -> None:
        self.ends[job_id] = time.time()
        self.changed.set()

    async def wait(self, done: Callable[[], bool], limit: float) -> bool:
        deadline = time.monotonic() + limit
        while not done():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    def drain(self, ids: list[str]) -> Drain:
        done = [i for i in ids if i in self.ends]
        problems = [f"{self.duplicates} duplicate starts"] if self.duplicates else []
        if len(done) < len(ids):
            problems.append(f"{len(ids) - len(done)} jobs not finished")
        if not done:
            return Drain(len(ids), 0, 0.0, problems=problems)
        first = min(self.starts[i] for i in done)
        inside = median([(self.ends[i] - self.starts[i]) * 1000 for i in done])
        return Drain(len(ids), len(done), max(self.ends[i] for i in done) - first, inside, problems)


async def _fresh_redis(tmp: Path) -> tuple[EmbeddedRedis, Redis]:
    server = EmbeddedRedis(tmp, appendonly=False).start(stdout=subprocess.DEVNULL)
    return server, Redis.from_url(server.url)


# --- plain arq -----------------------------------------------------------------------------------


async def arq_job(ctx: dict[str, Any], seconds: float) -> None:
    marks: Marks = ctx["marks"]
    marks.start(ctx["job_id"])
    if seconds:
        await asyncio.sleep(seconds)
    marks.end(ctx["job_id"])


async def bench_arq(jobs: int, slots: int, job_s: float, *, wake_samples: int, idle_s: float,
                    poll: float) -> Column:
    """arq's Worker as it ships, with `poll` (the project's WORKER_POLL_DELAY: what the `arq` CLI
    path runs with; arq's own default is 0.5 s, ten times slower to start jobs)."""
    with tempfile.TemporaryDirectory(prefix="bench-arq-") as tmp:
        server, redis = await _fresh_redis(Path(tmp))
        try:
            settings = RedisSettings.from_dsn(server.url)
            pool = await create_pool(settings, job_serializer=serialize, job_deserializer=deserialize,
                                     default_queue_name=ARQ_QUEUE)
            marks = Marks()
            ids = [f"drain-{i:06d}" for i in range(jobs)]
            now_ms = int(time.time() * 1000)
            async with pool.pipeline(transaction=True) as pipe:  # queued before the worker starts
                for job_id in ids:
                    pipe.psetex(job_key_prefix + job_id, pool.expires_extra_ms,
                                serialize_job("job", (job_s,), {}, None, now_ms, serializer=serialize))
                    pipe.zadd(ARQ_QUEUE, {job_id: now_ms})
                await pipe.execute()

            w = Worker(functions=[func(arq_job, name="job")], queue_name=ARQ_QUEUE, redis_settings=settings,
                       max_jobs=slots, handle_signals=False, burst=False, poll_delay=poll, job_serializer=serialize,
                       job_deserializer=deserialize, keep_result=0, ctx={"marks": marks})
            run = asyncio.create_task(w.async_run())
            await marks.wait(lambda: len(marks.ends) >= jobs, 60 + 3 * jobs * job_s)
            drain = marks.drain(ids)

            async def enqueue(i: int) -> float:
                t0 = time.time()
                await pool.enqueue_job("job", 0, _job_id=f"wake-{i}")
                return t0

            async def started(i: int) -> float:
                await marks.wait(lambda: f"wake-{i}" in marks.starts, 10)
                return marks.starts.get(f"wake-{i}", float("nan"))

            await asyncio.sleep(0.5)
            idle = await measure_idle(server.url, idle_s)
            wake = await trickle(enqueue, started, wake_samples)
            with contextlib.suppress(asyncio.CancelledError):  # arq's close re-raises a cancelled job's end
                await w.close()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            await pool.aclose()
        finally:
            await redis.aclose()
            server.stop()
    return Column(drain, wake, idle)


# --- SAQ -----------------------------------------------------------------------------------------


async def bench_saq(jobs: int, slots: int, job_s: float, *, wake_samples: int, idle_s: float) -> Column:
    try:
        from saq import Queue
        from saq import Worker as SaqWorker
    except ImportError:
        raise SystemExit("SAQ is an anchor of this benchmark: pip install -e '.[bench]'") from None

    marks = Marks()

    async def saq_job(ctx: dict[str, Any], *, seconds: float) -> None:
        job_key = ctx["job"].key
        marks.start(job_key)
        if seconds:
            await asyncio.sleep(seconds)
        marks.end(job_key)

    saq_job.__qualname__ = "job"
    with tempfile.TemporaryDirectory(prefix="bench-saq-") as tmp:
        server, redis = await _fresh_redis(Path(tmp))
        try:
            queue = Queue.from_url(server.url, name="bench")
            await queue.connect()
            ids = [f"drain-{i:06d}" for i in range(jobs)]
            for job_id in ids:  # queued before the worker starts
                await queue.enqueue("job", key=job_id, seconds=job_s, timeout=0)
            worker: Any = SaqWorker(queue, functions=[saq_job], concurrency=slots)  # SAQ types its ctx as a TypedDict
            run = asyncio.create_task(worker.start())
            await marks.wait(lambda: len(marks.ends) >= jobs, 60 + 3 * jobs * job_s)
            drain = marks.drain(ids)

            async def enqueue(i: int) -> float:
                t0 = time.time()
                await queue.enqueue("job", key=f"wake-{i}", seconds=0, timeout=0)
                return t0

            async def started(i: int) -> float:
                await marks.wait(lambda: f"wake-{i}" in marks.starts, 10)
                return marks.starts.get(f"wake-{i}", float("nan"))

            await asyncio.sleep(0.5)
            idle = await measure_idle(server.url, idle_s)
            wake = await trickle(enqueue, started, wake_samples)
            await worker.stop()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            await queue.disconnect()
        finally:
            await redis.aclose()
            server.stop()
    return Column(drain, wake, idle)
