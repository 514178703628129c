#!/usr/bin/env python3
"""Fault injection against a stack this script starts itself, with a table of what happened.

    .venv/bin/python scripts/faults.py [--scenario NAME ...] [--quick] [--keep]

Each scenario gets a fresh stack in a temporary directory: its own valkey (appendonly=yes, on
127.0.0.1), a SQLite file, `python -m agent_service web` and `worker` processes (JOB_LEASE_SECONDS=3).
Nothing listens anywhere but 127.0.0.1, and every wait is bounded.

Scenarios:
  kill9      rounds of `kill -9` of a worker mid-job (two workers; a replacement is started each time)
  drain      SIGTERM of a worker running short and long jobs (WORKER_DRAIN_SECONDS=3)
  poison     a job that SIGKILLs its own worker, restarted each time (JOB_MAX_WORKER_LOSSES=3)
  redis-2s   valkey stopped with SIGTERM for 2 s under a steady load, restarted from its AOF
  redis-20s  valkey stopped with SIGKILL for 20 s under a steady load, restarted from its AOF
  redis-burst  valkey SIGKILLed while a worker starts a backlog of 100 jobs, restarted at once

Counts per scenario:
  accepted    submissions answered 202
  succeeded   ended SUCCESS with exactly the expected answer
  failed      ended FAILURE or REVOKED (expected only in `poison`), or SUCCESS with a wrong answer
  stuck       not finished by the end of the scenario's wait
  duplicated  two terminal states on the task's event stream, or an answer produced twice as one
              (the text or the chunks repeated)
  lost        accepted, then unknown to the API (404) or finished without its result
  recovery_s  kill9: kill -> the lost jobs started again (worst round); drain: SIGTERM -> the
              re-queued jobs started on the other worker; poison: submit -> FAILURE; redis: restart
              -> the API accepts again and every worker polls again; redis-burst: restart -> all done
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import httpx
import redis as sync_redis
from arq.constants import in_progress_key_prefix

from agent_service.agents.schemas import AgentInput, AgentOutput
from agent_service.cli import bootstrap
from agent_service.cli.embedded import EmbeddedRedis, free_port
from agent_service.config import Settings, env_name, load_settings

HERE = Path(__file__).resolve().parent
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
CHUNK = re.compile(r"\s*\S+\s*")
LEASE = 3.0
BASE_ENV = {
    "APP_ENV": "test",
    "HOST": "127.0.0.1",
    "JWT_SECRET": "faults-script-secret-0123456789abcdefghijklmnopqrstuvwxyz",
    "LOG_JSON": "true",
    "LOG_LEVEL": "INFO",
    "JOB_LEASE_SECONDS": str(LEASE),
    "JOB_RETRY_BACKOFF_BASE": "0.05",
    "JOB_RETRY_BACKOFF_MAX": "0.2",
    "WORKER_POLL_DELAY": "0.02",
    "WORKER_HEALTH_INTERVAL": "1",
    "RATE_LIMIT_FREE": "100000",
    "RATE_LIMIT_STREAM_FREE": "100000",
    "JOB_RATE_LIMIT_ALL": "100000",
    "JOB_RATE_LIMIT_INVOKE": "100000",
    "JOB_RATE_LIMIT_STREAM": "100000",
    "AGENTS": "faults:PoisonAgent",  # this file, found through PYTHONPATH
}


class PoisonAgent:
    """A job that takes its worker down (SIGKILL of its own process, as an OOM kill would)."""

    name = "poison"
    description = "kills the worker that runs it"
    available = True

    async def invoke(self, data: AgentInput) -> AgentOutput:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    async def stream(self, data: AgentInput) -> AsyncIterator[str]:
        os.kill(os.getpid(), signal.SIGKILL)
        yield "unreachable"


# --- the stack ------------------------------------------------------------------------------------


def wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until truthy; the last value (falsy) after `timeout`. Never raises for a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    e = json.loads(line)
                    if name is None or e.get("event") == name:
                        out.append(e)
        return out

    def task_ids(self, name: str) -> set[str]:
        return {e["task_id"] for e in self.events(name) if "task_id" in e}

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._fh.close()


class Stack:
    def __init__(self, root: Path, **settings: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(root / "valkey", appendonly=True)
        self.prefix = f"faults-{uuid.uuid4().hex[:8]}:"
        own = {env_name(f) for f in Settings.__struct_fields__}
        inherited = {k: v for k, v in os.environ.items() if k not in own}  # no stray REDIS_URL, DATABASE_URL…
        self.env = {**inherited, **BASE_ENV, "REDIS_URL": self.redis.url, "REDIS_KEY_PREFIX": self.prefix,
                    "DATABASE_PATH": str(root / "agent_service.db"), "VAR_DIR": str(root / "var"),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH"))
                                              if p),
                    **settings}
        self.workers: list[Proc] = []
        self.web: Proc | None = None
        self.base = ""
        self.headers: dict[str, str] = {}
        self.http = httpx.Client(timeout=10)
        self._n = 0

    def start(self, workers: int) -> Stack:
        self.start_redis()
        settings = load_settings(self.env, env_file=None)
        asyncio.run(bootstrap.create_user(settings, email="faults@example.com", password="faults password!",
                                          admin=False))
        key = asyncio.run(bootstrap.create_api_key(settings, email="faults@example.com", name="faults"))
        self.headers = {"X-API-Key": key}
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.web = self._spawn("web", "--host", "127.0.0.1", "--port", str(port))
        for _ in range(workers):
            self.start_worker(ready=False)

        def web_up() -> bool:
            try:
                return self.http.get(f"{self.base}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait(web_up, 30, 0.1):
            raise RuntimeError(f"the web process never answered:\n{self.web.log.read_text()[-3000:]}")
        for w in self.workers:
            self.wait_ready(w)
        return self

    def _spawn(self, kind: str, *args: str) -> Proc:
        self._n += 1
        return Proc([sys.executable, "-m", "agent_service", kind, *args], self.env, self.root / f"{kind}-{self._n}.log",
                    self.root)

    def start_worker(self, *, ready: bool = True) -> Proc:
        w = self._spawn("worker")
        self.workers.append(w)
        if ready:
            self.wait_ready(w)
        return w

    def wait_ready(self, w: Proc, timeout: float = 30) -> bool:
        """The worker ran its startup and beat once: its heartbeat hash names its pid."""
        pattern = f"{self.prefix}workers:{self.prefix}queue:w:*"

        def ready() -> bool:
            if not w.alive():
                return True
            try:
                with self.redis_client() as r:
                    return any(r.hget(k, "pid") == str(w.pid).encode() for k in r.scan_iter(match=pattern))
            except sync_redis.RedisError:
                return False

        return bool(wait(ready, timeout)) and w.alive()

    def redis_client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.redis.url, socket_timeout=2, socket_connect_timeout=2)

    def start_redis(self) -> None:
        self.redis = EmbeddedRedis(self.redis.data_dir, port=self.redis.port, appendonly=True)
        with (self.root / "valkey.log").open("ab") as fh:
            self.redis.start(stdout=fh.fileno())

    def stop_redis(self, sig: int) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(sig)
        self.redis.process.wait(15)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.web is not None:
            self.web.stop()
        self.http.close()
        self.redis.stop()

    # HTTP and what the stack knows about a task

    def post(self, message: str, *, agent: str = "echo", stream: bool = False,
             metadata: dict[str, Any] | None = None, client: httpx.Client | None = None) -> httpx.Response:
        body = {"message": message, "stream": stream, "metadata": metadata or {}}
        return (client or self.http).post(f"{self.base}/api/v1/agents/{agent}/invoke-async", json=body,
                                          headers=self.headers, timeout=10)

    def submit(self, tasks: dict[str, Expect], message: str, **kw: Any) -> str | None:
        resp = self.post(message, **kw)
        if resp.status_code != 202:
            return None
        task_id = str(resp.json()["task_id"])
        tasks[task_id] = Expect(message, bool(kw.get("stream")))
        return task_id

    def status(self, task_id: str) -> dict[str, Any] | None:
        try:
            resp = self.http.get(f"{self.base}/api/v1/agents/tasks/{task_id}", headers=self.headers, timeout=10)
        except httpx.HTTPError:
            return None
        if resp.status_code == 404:
            return {"state": "UNKNOWN", "http": 404}
        return resp.json() if resp.status_code == 200 else None

    def wait_states(self, ids: Iterable[str], ok: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        pending = set(ids)

        def check() -> bool:
            for t in list(pending):
                s = self.status(t)
                if s is not None and (ok(s) or s["state"] == "UNKNOWN"):
                    pending.discard(t)
            return not pending

        return bool(wait(check, timeout, 0.1))

    def terminal_events(self, task_id: str) -> list[str]:
        try:
            with self.redis_client() as r:
                entries = r.xrange(f"{self.prefix}task:{task_id}:events")
        except sync_redis.RedisError:
            return []
        out = []
        for _, fields in entries:
            e = json.loads(fields[b"e"])
            if e.get("type") == "state" and e.get("state") in FINISHED:
                out.append(e["state"])
        return out

    def rerun_started(self, task_id: str, after: float) -> float | None:
        times = [stamp(e) for w in self.workers for e in w.events("job.started")
                 if e.get("task_id") == task_id and stamp(e) > after]
        return min(times) if times else None


@dataclass
class Expect:
    message: str
    stream: bool
    fails: bool = False  # poison: FAILURE is the expected end


@dataclass
class Report:
    name: str
    detail: str
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def tally(stack: Stack, tasks: dict[str, Expect], wait_s: float) -> dict[str, Any]:
    """Wait (bounded) for every accepted task to finish, then count the outcomes."""
    stack.wait_states(tasks, lambda s: s["state"] in FINISHED, wait_s)
    c = {"accepted": len(tasks), "succeeded": 0, "failed": 0, "stuck": 0, "duplicated": 0, "lost": 0}
    losses = retries = reruns = 0
    marks: list[int] = []  # ms left on arq's in-progress mark of each stuck task
    for task_id, exp in tasks.items():
        s = stack.status(task_id)
        if s is None or s["state"] == "UNKNOWN":
            c["lost"] += 1
            continue
        losses += s.get("worker_losses", 0)
        retries += s.get("retries", 0)
        reruns += s.get("tries", 0) > 1
        terminal = stack.terminal_events(task_id)
        result = s.get("result") or {}
        content = result.get("content")
        chunks = result.get("chunks")
        doubled = len(terminal) > 1 or (content is not None and content.count(exp.message) > 1) or (
            exp.stream and chunks is not None and len(chunks) > len(CHUNK.findall(exp.message)))
        if doubled:
            c["duplicated"] += 1
        elif s["state"] not in FINISHED:
            c["stuck"] += 1
            with contextlib.suppress(sync_redis.RedisError), stack.redis_client() as r:
                marks.append(int(r.pttl(in_progress_key_prefix + task_id)))
        elif s["state"] == "SUCCESS" and content is None:
            c["lost"] += 1
        elif exp.fails or s["state"] != "SUCCESS":
            c["failed"] += 1
        elif content == exp.message and (not exp.stream or chunks == CHUNK.findall(exp.message)):
            c["succeeded"] += 1
        else:
            c["failed"] += 1
    return {**c, "worker_losses": losses, "retries": retries, "reruns": reruns, "_marks": marks}


# --- scenarios ------------------------------------------------------------------------------------


def kill9(root: Path, quick: bool) -> Report:
    rounds, per_round = (1, 4) if quick else (3, 6)
    stack = Stack(root).start(workers=2)
    tasks: dict[str, Expect] = {}
    recovery: list[float] = []
    killed_jobs = 0
    notes = []
    try:
        message = words(8)
        for n in range(rounds):
            batch = [t for i in range(per_round)
                     if (t := stack.submit(tasks, message, stream=i % 2 == 1, metadata={"delay": 0.5}))]
            stack.wait_states(batch, lambda s: s["state"] == "STARTED"
                              and (s.get("kind") != "stream" or s["progress"] >= 52), 15)
            alive = [w for w in stack.workers if w.alive()]
            running = {w.pid: (w.task_ids("job.started") - w.task_ids("job.succeeded")) & set(batch) for w in alive}
            victim = max(alive, key=lambda w: len(running[w.pid]))
            on_victim = running[victim.pid]
            killed_at = time.time()
            os.kill(victim.pid, signal.SIGKILL)
            victim.popen.wait(10)
            killed_jobs += len(on_victim)
            stack.start_worker(ready=False)
            wait(lambda v=on_victim, k=killed_at: all(stack.rerun_started(t, k) for t in v), 4 * LEASE)
            starts = [stack.rerun_started(t, killed_at) for t in on_victim]
            if all(starts):
                recovery.append(max(starts) - killed_at)  # type: ignore[type-var]
            else:
                notes.append(f"round {n + 1}: {sum(not s for s in starts)} job(s) not re-run within {4 * LEASE:g}s")
            stack.wait_states(batch, lambda s: s["state"] in FINISHED, 30)
            for w in stack.workers:
                if w.alive():
                    stack.wait_ready(w)
        counts = tally(stack, tasks, 30)
    finally:
        stack.close()
    return Report("kill9", f"{rounds} round(s) x {per_round} tasks (4 s each, half streaming), 2 workers, "
                  f"kill -9 of the busier worker mid-job, JOB_LEASE_SECONDS={LEASE:g}",
                  {**counts, "recovery_s": max(recovery) if recovery else None},
                  {"killed_jobs": killed_jobs, "rerun_after_kill_s": [round(r, 2) for r in recovery]}, notes)


def drain(root: Path, quick: bool) -> Report:
    seconds = 3.0
    n = 1 if quick else 3
    stack = Stack(root, WORKER_DRAIN_SECONDS=str(seconds)).start(workers=1)
    tasks: dict[str, Expect] = {}
    notes = []
    try:
        first = stack.workers[0]
        short_msg, long_msg = words(4, "s"), words(8, "l")
        short = [t for i in range(2 * n) if (t := stack.submit(tasks, short_msg, stream=i % 2 == 1,
                                                               metadata={"delay": 0.25}))]
        long = [t for i in range(2 * n) if (t := stack.submit(tasks, long_msg, stream=i % 2 == 1,
                                                              metadata={"delay": 1.0}))]
        stack.wait_states(short + long, lambda s: s["state"] == "STARTED", 15)
        second = stack.start_worker()
        sent, sent_wall = time.monotonic(), time.time()
        os.kill(first.pid, signal.SIGTERM)
        try:
            rc: int | None = first.popen.wait(seconds + 10)
        except subprocess.TimeoutExpired:
            rc = None
            notes.append(f"the worker was still running {seconds + 10:g}s after SIGTERM")
        exit_s = time.monotonic() - sent
        requeued = first.task_ids("job.requeued_on_shutdown")
        wait(lambda: all(stack.rerun_started(t, sent_wall) for t in requeued), 10)
        starts = [stack.rerun_started(t, sent_wall) for t in requeued]
        counts = tally(stack, tasks, 30)
        drained = len(first.task_ids("job.succeeded"))
        on_second = len(second.task_ids("job.succeeded") & set(long))
    finally:
        stack.close()
    recovery = max(starts) - sent_wall if starts and all(starts) else None  # type: ignore[type-var]
    return Report("drain", f"{len(short)} short (1 s) + {len(long)} long (8 s) jobs on one worker, SIGTERM, "
                  f"WORKER_DRAIN_SECONDS={seconds:g}, a second worker takes over",
                  {**counts, "recovery_s": recovery},
                  {"finished_in_drain": drained, "requeued": len(requeued), "completed_by_other": on_second,
                   "exit_after_sigterm_s": round(exit_s, 2), "exit_code": rc}, notes)


def poison(root: Path, quick: bool) -> Report:
    stack = Stack(root, JOB_MAX_WORKER_LOSSES="3").start(workers=1)
    tasks: dict[str, Expect] = {}
    deaths = 0
    try:
        sent = time.monotonic()
        task_id = stack.submit(tasks, "poison", agent="poison")
        assert task_id, "the poison task was not accepted"
        tasks[task_id].fails = True
        worker = stack.workers[0]
        while deaths < 6 and time.monotonic() - sent < 60:
            wait(lambda w=worker: not w.alive() or (stack.status(task_id) or {}).get("state") in FINISHED, 20)
            if worker.alive():
                break
            deaths += 1
            worker = stack.start_worker(ready=False)
        stack.wait_states([task_id], lambda s: s["state"] in FINISHED, 10)
        took = time.monotonic() - sent
        s = stack.status(task_id) or {}
        counts = tally(stack, tasks, 1)
    finally:
        stack.close()
    return Report("poison", "a job that SIGKILLs its worker; the worker is restarted each time, "
                  "JOB_MAX_WORKER_LOSSES=3", {**counts, "recovery_s": took},
                  {"workers_killed": deaths, "state": s.get("state"), "error_code": s.get("error_code")})


class Load:
    """Submissions at a steady pace from a thread; every answer is kept."""

    def __init__(self, stack: Stack, tasks: dict[str, Expect], every: float, message: str) -> None:
        self.stack, self.tasks, self.every, self.message = stack, tasks, every, message
        self.answers: list[tuple[float, int, str]] = []  # (monotonic time sent, status or 0, detail)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    resp = self.stack.post(self.message, metadata={"delay": 0.05}, client=client)
                except httpx.HTTPError as exc:
                    self.answers.append((sent, 0, type(exc).__name__))
                else:
                    if resp.status_code == 202:
                        self.tasks[resp.json()["task_id"]] = Expect(self.message, False)
                    ok = resp.status_code != 503 or (resp.headers.get("content-type", "").startswith(
                        "application/problem+json") and resp.headers.get("retry-after"))
                    self.answers.append((sent, resp.status_code, "" if ok else "503 without problem+json/Retry-After"))
                self._stop.wait(max(0.0, self.every - (time.monotonic() - sent)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def redis_outage(root: Path, outage: float, sig: int, name: str) -> Report:
    stack = Stack(root).start(workers=2)
    tasks: dict[str, Expect] = {}
    reads: list[tuple[int, Any]] = []
    notes: list[str] = []
    try:
        pids = [w.pid for w in stack.workers]
        with Load(stack, tasks, 0.1, "steady load here") as load:
            wait(lambda: len(tasks) >= 20, 15)
            known = list(tasks)
            stack.stop_redis(sig)
            down_at = time.monotonic()
            while time.monotonic() - down_at < outage:  # status reads while it is down: SQL only
                try:
                    resp = stack.http.get(f"{stack.base}/api/v1/agents/tasks/{known[len(reads) % len(known)]}",
                                          headers=stack.headers, timeout=5)
                    reads.append((resp.status_code, resp.json().get("live") if resp.status_code == 200 else None))
                except httpx.HTTPError as exc:
                    reads.append((0, type(exc).__name__))
                threading.Event().wait(0.2)
            stack.start_redis()
            up_at, up_wall = time.monotonic(), time.time()
            wait(lambda: any(t >= up_at and c == 202 for t, c, _ in load.answers), 15)
            wait(lambda: all(w.events("worker.redis_back") for w in stack.workers), 15)
            wait(lambda: sum(t >= up_at and c == 202 for t, c, _ in load.answers) >= 30, 15)
        counts = tally(stack, tasks, 60)
        first_202 = min((t - up_at for t, c, _ in load.answers if t >= up_at and c == 202), default=None)
        backs = [stamp(w.events("worker.redis_back")[0]) - up_wall for w in stack.workers
                 if w.events("worker.redis_back")]
        during = [(c, d) for t, c, d in load.answers if down_at <= t < up_at]
        codes: dict[str, int] = {}
        for _, c, _ in load.answers:
            codes[str(c)] = codes.get(str(c), 0) + 1
        restarted = [w.pid for w in stack.workers if w.alive()] != pids
        lines = {w.pid: {ev: len(w.events(ev)) for ev in ("worker.redis_unavailable", "worker.heartbeat_failed")}
                 for w in stack.workers}
        silent = sum(1 for t in tasks if not stack.terminal_events(t))
    finally:
        stack.close()
    recovery = None if first_202 is None or len(backs) < 2 else max(first_202, *backs)
    if any(d for _, d in during):
        notes.append("some 503s lacked problem+json or Retry-After")
    if silent:
        notes.append(f"{silent} task(s) finished (SQL) without a terminal event on their stream")
    return Report(name, f"valkey stopped with {signal.Signals(sig).name} for {outage:g} s under ~10 submissions/s, "
                  "restarted on the same port from its AOF; 2 workers",
                  {**counts, "recovery_s": recovery},
                  {"answers": codes, "refused_503_while_down": sum(c == 503 for c, _ in during),
                   "status_reads_while_down": f"{sum(c == 200 and live is False for c, live in reads)}/{len(reads)} "
                                              "200 live=false",
                   "first_202_after_restart_s": None if first_202 is None else round(first_202, 2),
                   "workers_back_after_s": [round(b, 2) for b in backs], "workers_restarted": restarted,
                   "worker_log_lines": lines}, notes)


def redis_burst(root: Path, quick: bool) -> Report:
    """Redis SIGKILLed while a worker is starting a backlog, restarted at once."""
    n = 50 if quick else 100
    stack = Stack(root).start(workers=0)
    tasks: dict[str, Expect] = {}
    try:
        for _ in range(n):
            stack.submit(tasks, "burst job", metadata={"delay": 0.1})
        stack.start_worker(ready=False)
        with stack.redis_client() as r:
            wait(lambda: sum(1 for _ in r.scan_iter(match=in_progress_key_prefix + "*", count=1000)) >= 3, 30, 0.002)
        stack.stop_redis(signal.SIGKILL)
        stack.start_redis()
        up = time.monotonic()
        done = stack.wait_states(tasks, lambda s: s["state"] in FINISHED, 3 * LEASE + 10)
        took = time.monotonic() - up if done else None
        counts = tally(stack, tasks, 0)
    finally:
        stack.close()
    return Report("redis-burst", f"{n} queued jobs, one worker starting them, valkey SIGKILLed as the first "
                  "jobs are marked in progress and restarted at once", {**counts, "recovery_s": took})


SCENARIOS: dict[str, Callable[[Path, bool], Report]] = {
    "kill9": kill9,
    "drain": drain,
    "poison": poison,
    "redis-2s": lambda root, quick: redis_outage(root, 2.0, signal.SIGTERM, "redis-2s"),
    "redis-20s": lambda root, quick: redis_outage(root, 8.0 if quick else 20.0, signal.SIGKILL, "redis-20s"),
    "redis-burst": redis_burst,
}
COLUMNS = ["accepted", "succeeded", "failed", "stuck", "duplicated", "lost", "recovery_s"]
INFO = ["worker_losses", "retries", "reruns"]


def show(report: Report, took: float) -> None:
    marks = report.counts.pop("_marks", [])
    if marks:
        report.notes.append(f"stuck task(s) still held by arq's in-progress mark for {min(marks) / 1000:.0f}-"
                            f"{max(marks) / 1000:.0f} s more (no lease was taken): {len(marks)}")
    print(f"\n== {report.name}: {report.detail} ({took:.0f} s)")
    cols = COLUMNS + INFO
    cells = []
    for col in cols:
        value = report.counts.get(col)
        cells.append("-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value))
    widths = [max(len(c), len(v)) for c, v in zip(cols, cells, strict=True)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join(v.rjust(w) for v, w in zip(cells, widths, strict=True)))
    for key, value in report.extra.items():
        print(f"  {key}: {value}")
    for note in report.notes:
        print(f"  note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tasks, an 8 s long outage")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, AOF, SQLite)")
    args = parser.parse_args()
    names = list(SCENARIOS) if not args.scenario or "all" in args.scenario else args.scenario
    root = Path(tempfile.mkdtemp(prefix="agent-service-faults-"))
    print(f"stacks under {root} (valkey, SQLite, web, workers on 127.0.0.1)")
    bad = 0
    try:
        for name in names:
            started = time.monotonic()
            report = SCENARIOS[name](root / name, args.quick)
            show(report, time.monotonic() - started)
            c = report.counts
            bad += c["stuck"] + c["duplicated"] + c["lost"] + (c["failed"] if name != "poison" else 0)
    finally:
        if args.keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
