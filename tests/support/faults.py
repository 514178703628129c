"""Fault-injection helpers: a whole stack per test (its own valkey with an AOF, a SQLite file, uvicorn
and worker processes), so a test may SIGKILL a worker, SIGTERM it mid-drain, or stop and restart the
Redis server on the same port and data dir. Also the agents those tests need (AGENTS setting).

Waits are on observable events (a log line, a worker's heartbeat hash, a task's state), bounded.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis as sync_redis

from agent_service.agents.schemas import AgentInput, AgentOutput
from agent_service.cli.embedded import EmbeddedRedis, free_port
from tests.support.environment import TEST_ENV
from tests.support.processes import Process, bootstrap_user, service_argv
from tests.support.waiting import wait_http_ok, wait_until

FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


# --- agents (AGENTS="tests.support.faults:PoisonAgent") ----------------------------------------


class PoisonAgent:
    """A job that takes its worker down: SIGKILL of its own process, as an OOM kill would."""

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


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def log_events(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process's output (LOG_JSON=true), in order; other lines are skipped."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def ts(event: dict[str, Any]) -> float:
    """A log line's timestamp as a Unix time (compare with time.time())."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


@dataclass
class Worker:
    process: Process
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = log_events(self.process.output())
        return evs if name is None else [e for e in evs if e.get("event") == name]

    def task_ids(self, event: str) -> set[str]:
        return {e["task_id"] for e in self.events(event) if "task_id" in e}

    def signal(self, sig: int) -> float:
        os.kill(self.pid, sig)
        return time.monotonic()

    def wait_exit(self, timeout: float) -> int:
        return self.process.proc.wait(timeout)


class Stack:
    """valkey (AOF) + SQLite + uvicorn + workers under `root`, keys under their own prefix."""

    def __init__(self, root: Path, **settings: str) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(root / "valkey", appendonly=True)
        self.prefix = f"t-{uuid.uuid4().hex[:10]}:"
        self.env = {
            **TEST_ENV,
            "REDIS_URL": self.redis.url,
            "REDIS_KEY_PREFIX": self.prefix,
            "DATABASE_PATH": str(root / "agent_service.db"),
            "VAR_DIR": str(root / "var"),
            "JOB_LEASE_SECONDS": "3",
            "AGENTS": "tests.support.faults:PoisonAgent",
            **settings,
        }
        self.workers: list[Worker] = []
        self.web: Process | None = None
        self.base = ""
        self.headers: dict[str, str] = {}
        self.http = httpx.Client(timeout=10)
        self._logs = 0

    # processes

    def start(self, workers: int = 1) -> Stack:
        self._start_redis()
        self.headers = {"X-API-Key": bootstrap_user(self.env)}
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.web = self._spawn("web", PORT=str(port))
        for _ in range(workers):
            self.start_worker(wait=False)
        wait_http_ok(f"{self.base}/health/live", on_fail=lambda: self.web.output()[-3000:] if self.web else "")
        for w in self.workers:
            self.wait_worker_ready(w)
        return self

    def _spawn(self, kind: str, **extra: str) -> Process:
        env = {**os.environ, **self.env, **extra}
        env.pop("PYTEST_CURRENT_TEST", None)
        self._logs += 1
        return Process(service_argv(kind, env), env, self.root / f"{kind}-{self._logs}.log")

    def start_worker(self, *, wait: bool = True) -> Worker:
        w = Worker(self._spawn("worker"))
        self.workers.append(w)
        if wait:
            self.wait_worker_ready(w)
        return w

    def wait_worker_ready(self, w: Worker, timeout: float = 20) -> None:
        """The worker has run its startup and beaten once: its heartbeat hash names its pid."""
        board = f"{self.prefix}workers:{self.env.get('QUEUE_NAME') or self.prefix + 'queue'}:w:*"

        def ready() -> bool:
            if not w.alive():
                raise AssertionError(f"worker {w.pid} exited with {w.process.proc.returncode}:\n"
                                     + w.process.output()[-3000:])
            with self.redis_client() as r:
                for key in r.scan_iter(match=board, count=100):
                    if r.hget(key, "pid") == str(w.pid).encode():
                        return True
            return False

        wait_until(ready, timeout=timeout, interval=0.05,
                   message=lambda: f"worker {w.pid} never beat:\n{w.process.output()[-3000:]}")

    def redis_client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.redis.url, socket_timeout=2, socket_connect_timeout=2)

    def stop_redis(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server with `sig` and wait for it to be gone (SIGTERM: it writes its AOF first)."""
        proc = self.redis.process
        assert proc is not None and proc.poll() is None
        proc.send_signal(sig)
        proc.wait(10)

    def start_redis(self) -> None:
        """The same server again: same port, same data dir, its AOF replayed."""
        self.redis = EmbeddedRedis(self.redis.data_dir, port=self.redis.port, appendonly=True)
        self._start_redis()

    def _start_redis(self) -> None:
        with (self.root / "valkey.log").open("ab") as fh:
            self.redis.start(stdout=fh.fileno())

    def close(self) -> None:
        for w in self.workers:
            w.process.stop()
        if self.web is not None:
            self.web.stop()
        self.http.close()
        self.redis.stop()

    def logs(self) -> str:
        """The tail of every process's output, for a failure message."""
        parts = [f"--- web\n{self.web.output()[-2500:]}"] if self.web else []
        parts += [f"--- worker {w.pid} (rc={w.process.proc.poll()})\n{w.process.output()[-2500:]}"
                  for w in self.workers]
        return "\n".join(parts)

    # HTTP

    def submit(self, message: str, *, agent: str = "echo", stream: bool = False,
               metadata: dict[str, Any] | None = None) -> str:
        resp = self.post_task(message, agent=agent, stream=stream, metadata=metadata)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["task_id"])

    def post_task(self, message: str, *, agent: str = "echo", stream: bool = False,
                  metadata: dict[str, Any] | None = None, timeout: float = 10) -> httpx.Response:
        body: dict[str, Any] = {"message": message, "stream": stream, "metadata": metadata or {}}
        return self.http.post(f"{self.base}/api/v1/agents/{agent}/invoke-async", json=body, headers=self.headers,
                              timeout=timeout)

    def get_status(self, task_id: str, timeout: float = 10) -> httpx.Response:
        return self.http.get(f"{self.base}/api/v1/agents/tasks/{task_id}", headers=self.headers, timeout=timeout)

    def status(self, task_id: str) -> dict[str, Any]:
        resp = self.get_status(task_id)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def wait_state(self, task_ids: Iterable[str], states: Callable[[dict[str, Any]], bool] | set[str] = FINISHED,
                   timeout: float = 20) -> dict[str, dict[str, Any]]:
        """Poll until every task's status satisfies `states`; the statuses then."""
        ids = list(task_ids)
        ok = states if callable(states) else (lambda s: s["state"] in states)
        last: dict[str, dict[str, Any]] = {}

        def done() -> bool:
            for t in ids:
                if t not in last or not ok(last[t]):
                    last[t] = self.status(t)
            return all(ok(last[t]) for t in ids)

        wait_until(done, timeout=timeout, interval=0.05,
                   message=lambda: f"not reached: {[s for s in last.values() if not ok(s)]}\n{self.logs()}")
        return last

    def terminal_events(self, task_id: str) -> list[str]:
        """The terminal states published on the task's event stream (two would be a double finish)."""
        with self.redis_client() as r:
            entries = r.xrange(f"{self.prefix}task:{task_id}:events")
        states = []
        for _, fields in entries:
            event = json.loads(fields[b"e"])
            if event.get("type") == "state" and event.get("state") in FINISHED:
                states.append(event["state"])
        return states


@dataclass
class Answer:
    sent: float  # monotonic
    code: int  # 0: no HTTP answer at all
    task_id: str | None = None
    content_type: str = ""
    retry_after: str | None = None
    text: str = ""


class Load:
    """A steady trickle of submissions from a thread; every answer is kept (`answers`), and the ids of
    accepted tasks in order (`accepted`)."""

    def __init__(self, stack: Stack, *, every: float = 0.1, message: str = "steady load here",
                 metadata: dict[str, Any] | None = None) -> None:
        self.stack, self.every, self.message = stack, every, message
        self.metadata = metadata or {"delay": 0.05}
        self.answers: list[Answer] = []
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._http = httpx.Client(timeout=5)

    def _run(self) -> None:
        body = {"message": self.message, "metadata": self.metadata}
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                resp = self._http.post(f"{self.stack.base}/api/v1/agents/echo/invoke-async", json=body,
                                       headers=self.stack.headers)
            except httpx.HTTPError as exc:
                self.answers.append(Answer(sent, 0, text=repr(exc)))
            else:
                task_id = resp.json()["task_id"] if resp.status_code == 202 else None
                if task_id:
                    self.accepted.append(task_id)
                self.answers.append(Answer(sent, resp.status_code, task_id, resp.headers.get("content-type", ""),
                                           resp.headers.get("retry-after"), resp.text[:300]))
            self._stop.wait(max(0.0, self.every - (time.monotonic() - sent)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._http.close()

    def since(self, t: float, code: int | None = None) -> list[Answer]:
        return [a for a in list(self.answers) if a.sent >= t and (code is None or a.code == code)]
