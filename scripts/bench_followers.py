#!/usr/bin/env python3
"""Many live followers of task events on one web process: what they cost and how fast they hear.

One run: an embedded valkey, SQLite, one web process (`python -m agent_service web`) and, later, one
worker. T streaming echo tasks are queued with the worker stopped; N SSE followers
(`GET /agents/tasks/{id}/events`, N/T per task) are opened at once by a lean client (raw asyncio
streams, no HTTP library) and each waits for its first event (the PENDING state, from the
history). With all of them held, the web process's Redis connections are counted (its TCP
connections to the server, and the server's blocked clients). Then the worker starts, the tasks
stream their chunks, and `--late` more followers open one by one (`--late-rate` a second) while
the thousand are held and streaming; every follower must see exactly its task's events, in order,
to the end.

Printed: followers held, Redis connections of the web process (before the followers, while they
are held), first-event latency p50/p99 (request sent -> first event) of the thousand opened at
once and of the late ones, live latency p50/p99 (an event's stream id is the Redis clock at XADD
-> received by the client; same machine, same clock) and whether every follower saw every event.
The client shares the machine's CPUs with the server.

The anchor, in the same run: the plain design (scripts/anchors/follow_naive.py: an SSE route
blocking on the task's stream with a Redis connection of its own, no auth), followed the same way
on ten more tasks of the same worker; then the ratios.

    .venv/bin/python scripts/bench_followers.py [--followers 1000] [--tasks 10] [--chunks 20] [--delay 0.25]
                                                [--late 200] [--late-rate 100] [--no-anchor]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent_service.cli import bootstrap  # noqa: E402
from agent_service.cli.embedded import EmbeddedRedis, free_port  # noqa: E402
from agent_service.config import load_settings  # noqa: E402

FINISHED = {"SUCCESS", "FAILURE", "REVOKED"}
PREFIX = "bench-followers:"


@dataclass
class Follower:
    task_id: str
    sent: float = 0.0
    first: float | None = None
    ids: list[str] = field(default_factory=list)
    live_ms: list[float] = field(default_factory=list)
    end: str | None = None
    error: str | None = None


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, status: int = 200) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == status:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer: {log.read_text()[-2000:]}")


async def _body(reader: asyncio.StreamReader, chunked: bool) -> bytes:
    """The next piece of the response body (b"" at its end)."""
    if not chunked:
        return await reader.read(65536)
    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
    if size == 0:
        return b""
    data = await reader.readexactly(size)
    await reader.readexactly(2)
    return data


async def follow(f: Follower, port: int, key: str, up: Callable[[], None]) -> None:
    """One SSE follower over a raw socket: GET, then events until the task's closing state. `up()`
    once it holds its first event or failed."""
    try:
        await _follow(f, port, key, up)
    finally:
        if f.first is None:
            up()


async def _follow(f: Follower, port: int, key: str, up: Callable[[], None]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        f.error = f"connect: {exc}"
        return
    try:
        f.sent = time.perf_counter()
        writer.write((f"GET /api/v1/agents/tasks/{f.task_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"X-API-Key: {key}\r\nAccept: text/event-stream\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            f.error = f"HTTP {status.decode()}: {(await reader.read(300)).decode(errors='replace')}"
            return
        chunked = b"transfer-encoding: chunked" in head.lower()
        buf = b""
        while f.end is None:
            piece = await _body(reader, chunked)
            if not piece:
                f.error = "the stream ended before the task"
                return
            buf += piece
            while b"\n\n" in buf and f.end is None:
                block, buf = buf.split(b"\n\n", 1)
                had_first = f.first is not None
                _event(f, block.decode())
                if not had_first and f.first is not None:
                    up()
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        f.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


def _event(f: Follower, block: str) -> None:
    fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
    if "data" not in fields:
        return  # retry: or a keep-alive
    now = time.perf_counter()
    if f.first is None:
        f.first = now
    data = json.loads(fields["data"])
    if "id" in fields:
        f.ids.append(fields["id"])
        if data.get("type") == "chunk":
            f.live_ms.append(time.time() * 1000 - int(fields["id"].split("-")[0]))
    if data.get("type") == "state" and data.get("state") in FINISHED:
        f.end = data["state"]
    elif data.get("type") in ("reconnect", "error"):
        f.error = f"ended early: {data}"
        f.end = "early"


def web_redis_connections(pid: int, redis_port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, name: str, port: int, key: str, task_ids: list[str], redis_url: str,
              web_pid: int, start_worker: Callable[[], subprocess.Popen[bytes]]) -> dict[str, float]:
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    followers = [Follower(task_ids[i % len(task_ids)]) for i in range(args.followers)]
    before = web_redis_connections(web_pid, redis_port)
    t0 = time.perf_counter()
    all_up, count = asyncio.Event(), [0]

    def up() -> None:
        count[0] += 1
        if count[0] == len(followers):
            all_up.set()

    running = [asyncio.create_task(follow(f, port, key, up)) for f in followers]
    deadline = time.monotonic() + args.timeout
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_up.wait(), args.timeout)
    opened_in = time.perf_counter() - t0
    held = sum(1 for f in followers if f.first is not None and f.error is None)
    # the most seen over a second: a follower settles into its wait a moment after its first event
    during = blocked = clients = 0
    with sync_redis.Redis.from_url(redis_url) as r:
        for _ in range(10):
            info = r.info("clients")
            during = max(during, web_redis_connections(web_pid, redis_port))
            blocked, clients = max(blocked, info["blocked_clients"]), max(clients, info["connected_clients"])
            await asyncio.sleep(0.1)
    worker = start_worker()
    late: list[Follower] = []
    try:
        # followers opening one by one while the thousand are held and their tasks stream: what a
        # client that opens a stream waits for its first event on a busy process
        await asyncio.sleep(args.late_after)
        for i in range(args.late):
            f = Follower(task_ids[i % len(task_ids)])
            late.append(f)
            running.append(asyncio.create_task(follow(f, port, key, lambda: None)))
            await asyncio.sleep(1 / args.late_rate)
        remaining = max(1.0, deadline - time.monotonic())
        _, pending = await asyncio.wait(running, timeout=remaining)
        for t in pending:
            t.cancel()
    finally:
        worker.terminate()
        worker.wait(15)
    with sync_redis.Redis.from_url(redis_url) as r:
        truth = {t: [eid.decode() for eid, _ in r.xrange(f"{PREFIX}task:{t}:events")] for t in task_ids}
    everyone = followers + late
    complete = [f for f in everyone if f.error is None and f.end in FINISHED and f.ids == truth[f.task_id]]
    first_ms = [(f.first - f.sent) * 1000 for f in followers if f.first is not None]
    late_ms = [(f.first - f.sent) * 1000 for f in late if f.first is not None]
    live = [ms for f in followers for ms in f.live_ms]
    errors = [f.error for f in everyone if f.error]
    print(f"{name}: {args.followers} followers opened at once on {len(task_ids)} tasks ({args.chunks} chunks, "
          f"{args.delay:g} s apart); one web process; {os.cpu_count()} CPUs shared with this client")
    print(f"  followers held at once:            {held} (all holding their first event {opened_in:.1f} s "
          f"after the first request)")
    print(f"  Redis connections of the web:      {before} before, {during} while {held} followers were held "
          f"(server, most seen: {clients} clients, {blocked} blocked)")
    print(f"  first event, the {args.followers} opened at once:  p50 {pct(first_ms, 0.5):.1f} ms, "
          f"p99 {pct(first_ms, 0.99):.1f} ms (each waits behind the requests sent before it)")
    print(f"  first event, {len(late)} opened one by one ({args.late_rate:g}/s) while {held} are held and streaming: "
          f"p50 {pct(late_ms, 0.5):.1f} ms, p99 {pct(late_ms, 0.99):.1f} ms")
    print(f"  live event latency (XADD->client): p50 {pct(live, 0.5):.1f} ms, p99 {pct(live, 0.99):.1f} ms "
          f"over {len(live)} deliveries (mean {statistics.fmean(live) if live else float('nan'):.1f} ms)")
    ok = len(complete) == len(everyone)
    print(f"  every follower saw every event: {'yes' if ok else 'no'} ({len(complete)}/{len(everyone)} complete)")
    for e in sorted(set(errors))[:5]:
        print(f"    error: {e} (x{errors.count(e)})")
    return {"ok": float(ok), "connections": float(during), "late_p99": pct(late_ms, 0.99),
            "late_p50": pct(late_ms, 0.5), "live_p99": pct(live, 0.99), "live_p50": pct(live, 0.5),
            "burst_p99": pct(first_ms, 0.99)}


def submit_tasks(base: str, key: str, args: argparse.Namespace) -> list[str]:
    """T streaming echo tasks, queued while no worker runs."""
    words = " ".join(f"w{i}" for i in range(args.chunks))
    body = {"message": words, "stream": True, "metadata": {"delay": args.delay}}
    task_ids = []
    for _ in range(args.tasks):
        resp = httpx.post(f"{base}/api/v1/agents/echo/invoke-async", json=body, headers={"X-API-Key": key}, timeout=10)
        if resp.status_code != 202:
            raise SystemExit(f"submit: {resp.status_code} {resp.text[:300]}")
        task_ids.append(resp.json()["task_id"])
    return task_ids


def compare(ours: dict[str, float], anchor: dict[str, float]) -> None:
    print("ours / plain design (one blocked Redis connection per follower, no auth, no slots):")
    for label, k in (("Redis connections while held", "connections"), ("late first event p99", "late_p99"),
                     ("live event p50", "live_p50"), ("live event p99", "live_p99")):
        ratio = ours[k] / anchor[k] if anchor[k] else float("nan")
        print(f"  {label:<30} {ours[k]:8.1f} vs {anchor[k]:8.1f}   ratio {ratio:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--followers", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--chunks", type=int, default=20, help="chunks each task streams")
    ap.add_argument("--delay", type=float, default=0.25, help="seconds between a task's chunks")
    ap.add_argument("--late", type=int, default=200, help="followers opened one by one once the others are held")
    ap.add_argument("--late-rate", type=float, default=100.0, help="late followers opened per second")
    ap.add_argument("--late-after", type=float, default=2.0, help="seconds after the worker starts")
    ap.add_argument("--timeout", type=float, default=90.0, help="the whole follow must end within this")
    ap.add_argument("--no-anchor", action="store_true", help="only this service (not the plain design too)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.followers + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    tmp = Path(tempfile.mkdtemp(prefix="bench-followers-"))
    redis = EmbeddedRedis(tmp / "redis", appendonly=False).start()
    many = str(10 * args.followers + 1000)
    env = {
        "APP_ENV": "test", "LOG_LEVEL": "WARNING", "LOG_JSON": "true", "REDIS_URL": redis.url,
        "REDIS_KEY_PREFIX": PREFIX, "DATABASE_PATH": str(tmp / "bench.db"), "VAR_DIR": str(tmp / "var"),
        "JWT_SECRET": "bench-secret-0123456789abcdefghijklmnopqrstuvwxyz", "RATE_LIMIT_ENABLED": "false",
        "STREAM_MAX_PER_USER": many, "STREAM_MAX_PER_PROCESS": many, "HTTP_MAX_CONNECTIONS": many,
        "JOBS_RUNNING_FREE": many, "JOB_RATE_LIMIT_ALL": many, "JOB_RATE_LIMIT_STREAM": many,
        "WORKER_MAX_JOBS": str(max(10, args.tasks)), "WORKER_POLL_DELAY": "0.05", "QUEUE_NAME": "arq:bench-followers",
    }
    settings = load_settings(env, env_file=None)
    asyncio.run(bootstrap.create_user(settings, email="bench@example.com", password="bench password", admin=False))
    key = asyncio.run(bootstrap.create_api_key(settings, email="bench@example.com", name="bench"))
    port = free_port()
    web_log = tmp / "web.log"
    web = spawn([sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", str(port)], env,
                web_log)
    code = 1
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ok(f"{base}/health/live", web, web_log)
        task_ids = submit_tasks(base, key, args)

        def start_worker() -> subprocess.Popen[bytes]:
            return spawn([sys.executable, "-m", "agent_service", "worker"], env, tmp / "worker.log")

        ours = asyncio.run(run(args, "this service", port, key, task_ids, redis.url, web.pid, start_worker))
        code = 0 if ours["ok"] else 1
        if not args.no_anchor:
            # the same tasks' streams (written by this service's worker), followed the plain way
            anchor_port = free_port()
            anchor_log = tmp / "anchor.log"
            anchors = str(ROOT / "scripts" / "anchors")
            anchor = spawn([sys.executable, "-m", "uvicorn", "follow_naive:app", "--app-dir", anchors,
                            "--host", "127.0.0.1", "--port", str(anchor_port), "--log-level", "warning",
                            "--no-access-log"], {"REDIS_URL": redis.url, "EVENTS_PREFIX": f"{PREFIX}task:"}, anchor_log)
            try:
                wait_ok(f"http://127.0.0.1:{anchor_port}/api/v1/agents/tasks/none/events/x", anchor, anchor_log,
                        status=404)
                again = submit_tasks(base, key, args)
                plain = asyncio.run(run(args, "plain design", anchor_port, key, again, redis.url, anchor.pid,
                                        start_worker))
                code = code or (0 if plain["ok"] else 1)
                compare(ours, plain)
            finally:
                anchor.terminate()
                anchor.wait(15)
    finally:
        web.terminate()
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            web.kill()
        redis.stop()
    if code:
        print(f"  logs: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
