#!/usr/bin/env python3
"""Cost of the API rate limiter: invoke-async requests per second with limits on vs off.

One run, side by side: an embedded valkey-server, and for each mode a real uvicorn process
(same code, RATE_LIMIT_ENABLED=true|false) fed N POST /agents/echo/invoke-async requests at a
fixed concurrency over HTTP. Limits are set high so no request is rejected: what is measured is
the check itself (one Lua round trip) against the whole request (auth, SQLite insert, enqueue).

    .venv/bin/python scripts/bench_limiter.py [--requests 2000] [--concurrency 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from agent_service.config import load_settings  # noqa: E402


def start_web(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, **env}, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"web did not start: {log.read_text()[-2000:]}")


async def fire(base: str, key: str, n: int, concurrency: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(concurrency)
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, limits=limits, timeout=30) as c:
        async def one(i: int) -> None:
            nonlocal errors
            async with sem:
                r = await c.post("/api/v1/agents/echo/invoke-async", json={"message": f"bench {i}"})
                errors += r.status_code != 202

        await one(-1)  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0), errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode; the median is reported")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-limiter-"))
    redis = EmbeddedRedis(tmp / "redis", appendonly=False).start()
    base_env = {
        "APP_ENV": "test", "LOG_LEVEL": "WARNING", "LOG_JSON": "true", "REDIS_URL": redis.url,
        "DATABASE_PATH": str(tmp / "bench.db"), "VAR_DIR": str(tmp / "var"),
        "JWT_SECRET": "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        "RATE_LIMIT_FREE": "100000000", "QUEUE_NAME": "arq:bench",
    }
    settings = load_settings(base_env, env_file=None)
    asyncio.run(bootstrap.create_user(settings, email="bench@example.com", password="bench password", admin=False))
    key = asyncio.run(bootstrap.create_api_key(settings, email="bench@example.com", name="bench"))
    procs = {}
    try:
        for mode in ("off", "on"):
            port = free_port()
            env = {**base_env, "RATE_LIMIT_ENABLED": "true" if mode == "on" else "false"}
            procs[mode] = (start_web(env, port, tmp / f"web-{mode}.log"), f"http://127.0.0.1:{port}")
        results: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                rps, errors = asyncio.run(fire(procs[mode][1], key, args.requests, args.concurrency))
                if errors:
                    raise SystemExit(f"{errors} requests failed in mode {mode}")
                results[mode].append(rps)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
        redis.stop()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    print(f"invoke-async over HTTP: {args.requests} requests x {args.rounds} rounds, concurrency "
          f"{args.concurrency}, one uvicorn worker per mode, {os.cpu_count()} CPUs")
    print(f"  limits off   {off:8.1f} req/s   (rounds: {', '.join(f'{x:.0f}' for x in results['off'])})")
    print(f"  limits on    {on:8.1f} req/s   (rounds: {', '.join(f'{x:.0f}' for x in results['on'])})")
    print(f"  ratio on/off {on / off:8.3f}     limiter cost {100 * (1 - on / off):+.1f} %")


if __name__ == "__main__":
    main()
