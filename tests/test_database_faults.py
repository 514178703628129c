"""The SQL store failing under a running service, over real HTTP: PostgreSQL stopped (immediate
shutdown) and started again while tasks are being submitted, and a SQLite file whose write lock
another connection holds past DB_BUSY_TIMEOUT_MS. While the store is away a request that needs it
is a prompt 503 problem+json with Retry-After (never a 500, never a hang) and readiness names the
database; once it is back everything works again without restarting a process, and no accepted
task is lost or stuck."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_service.cli.embedded import EmbeddedRedis
from tests.support.logs import logged
from tests.support.stack import (
    HTTP_TIMEOUT,
    Machine,
    create_user,
    key_prefix,
    postgres_server,
    ready,
    status,
    submit,
    wait_ready,
    wait_state,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EMAIL, PASSWORD = "load@example.com", "load password!"
PROMPT = 6.0  # a request that needs the store answers within this while it is away
OUTAGE = 3.0  # the store stays away at least this long (measured on the load's own requests)


@dataclass
class Result:
    started: float
    elapsed: float
    status: int  # 0: no HTTP answer at all (connection error, client timeout)
    content_type: str | None = None
    retry_after: str | None = None
    body: Any = None
    error: str | None = None

    @property
    def task_id(self) -> str | None:
        return str(self.body["task_id"]) if self.status == 202 else None


def timed(method: str, url: str, **kwargs: Any) -> Result:
    started = time.monotonic()
    try:
        resp = httpx.request(method, url, timeout=15, **kwargs)
    except httpx.HTTPError as exc:
        return Result(started, time.monotonic() - started, 0, error=repr(exc))
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    return Result(started, time.monotonic() - started, resp.status_code, resp.headers.get("content-type"),
                  resp.headers.get("retry-after"), body)


def assert_unavailable(r: Result, what: str) -> None:
    """The answer of a request whose store is away: a prompt 503 problem+json with Retry-After."""
    assert r.status == 503, f"{what}: {r}"
    assert r.content_type == "application/problem+json", f"{what}: {r}"
    assert r.retry_after and r.retry_after.isdigit() and int(r.retry_after) > 0, f"{what}: {r}"
    assert r.body["status"] == 503 and r.body["code"] == "database_unavailable", f"{what}: {r}"
    assert r.elapsed < PROMPT, f"{what} took {r.elapsed:.2f}s: {r}"


class Load:
    """Threads submitting tasks one after another until stopped; every answer is kept."""

    def __init__(self, base: str, headers: dict[str, str], threads: int = 2) -> None:
        self.base, self.headers = base, headers
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            stream = i % 2 == 1
            body = {"message": f"load {n}-{i} a b c", "stream": stream, "metadata": {"delay": 0.05}}
            r = timed("POST", f"{self.base}/api/v1/agents/echo/invoke-async", json=body, headers=self.headers)
            with self._lock:
                self.results.append(r)
            i += 1
            self._stop.wait(0.05)

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    def count(self, status: int, *, since: float = 0.0) -> int:
        return sum(1 for r in self.snapshot() if r.status == status and r.started >= since)


def tracebacks(machine: Machine) -> list[str]:
    """Log lines with a traceback, but asyncpg's own pool warning: while the server is down its
    pool retries keeping DB_POOL_MIN connections and logs each failure with the traceback."""
    return [ln[:2000] for ln in machine.output().splitlines()
            if "Traceback" in ln and "Failed to restore the pool connection floor" not in ln]


@pytest.fixture
def machines() -> Iterator[list[Machine]]:
    """Machines a test starts; all are stopped afterwards."""
    started: list[Machine] = []
    yield started
    for m in started:
        m.stop()


def start_service(root: Path, env: dict[str, str], started: list[Machine]) -> tuple[Machine, Machine, dict[str, str]]:
    web, worker = Machine(root, "web", "web", env), Machine(root, "worker", "worker", env)
    started.extend([web, worker])
    key = create_user(Machine(root, "cli", "cli", env), EMAIL, PASSWORD)
    worker.start()
    web.start()
    wait_ready(web.base, timeout=40, on_fail=lambda: web.tail() + worker.tail())
    return web, worker, {"X-API-Key": key}


@pytest.mark.timeout(120)
def test_postgres_stopped_and_started_under_load(tmp_path: Path, redis_server: EmbeddedRedis,
                                                 machines: list[Machine]) -> None:
    with postgres_server() as pg:
        env = {"REDIS_URL": redis_server.url, "DATABASE_URL": pg.create_database(), "REDIS_KEY_PREFIX": key_prefix(),
               "WORKER_DRAIN_SECONDS": "3"}
        web, worker, headers = start_service(tmp_path, env, machines)

        def logs() -> str:
            return web.tail(6000) + worker.tail(6000)

        base = web.base

        with Load(base, headers) as load:
            wait_until(lambda: load.count(202) >= 10, timeout=20, message=logs)
            # and tasks that are running, or come due, while the database is away
            words = " ".join(f"w{i}" for i in range(10))
            slow = [submit(base, headers, {"message": words, "stream": True, "metadata": {"delay": 0.4}})
                    for _ in range(3)]
            slow.append(submit(base, headers, {"message": "due during the outage", "delay_seconds": 2}))
            wait_state(base, headers, slow[0], ("STARTED",), timeout=20)

            down_at = time.monotonic()
            pg.stop(mode="immediate")

            # while it is away: the load's submissions and each request that needs SQL are prompt 503s
            wait_until(lambda: load.count(503, since=down_at + OUTAGE) >= 1, timeout=30, interval=0.05,
                       message=lambda: f"{load.snapshot()[-5:]}\n{logs()}")
            for method, path in (("POST", "/api/v1/agents/echo/invoke-async"), ("GET", "/api/v1/agents/tasks"),
                                 ("GET", "/api/v1/sessions"), ("GET", "/api/v1/auth/me")):
                body = {"json": {"message": "while down"}} if method == "POST" else {}
                assert_unavailable(timed(method, f"{base}{path}", headers=headers, **body), f"{method} {path}")
            login = timed("POST", f"{base}/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD})
            assert_unavailable(login, "login")
            health = timed("GET", f"{base}/health/ready")
            assert health.status == 503 and health.elapsed < PROMPT, health
            assert health.body["components"]["database"]["ok"] is False, health
            assert health.body["components"]["redis"]["ok"] is True, health
            assert timed("GET", f"{base}/health/live").status == 200  # the process itself is fine

            pg.start()
            up_at = time.monotonic()
            # back without restarting anything: the same processes serve again
            wait_until(lambda: load.count(202, since=up_at) >= 10, timeout=30, interval=0.05,
                       message=lambda: f"{load.snapshot()[-5:]}\n{logs()}")
        assert web.running() and worker.running(), logs()
        wait_until(lambda: ready(base), timeout=20, interval=0.1, message=logs)

        results = load.snapshot()
        outage = [r for r in results if down_at <= r.started < up_at]
        # every answer is a 202 or, while the database was away, a prompt 503: never a 500, never a hang
        assert {r.status for r in results} <= {202, 503}, [r for r in results if r.status not in (202, 503)]
        assert outage and sum(r.status == 503 for r in outage) >= 3, outage
        for r in results:
            if r.status == 503:
                assert_unavailable(r, "a submission while the database was away")
        assert all(r.elapsed < PROMPT for r in results), max(results, key=lambda r: r.elapsed)

        # every accepted task succeeds: none lost, none stuck
        accepted = [r.task_id for r in results if r.task_id] + slow
        assert len(accepted) >= 24
        deadline = time.monotonic() + 60
        pending = set(accepted)
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} tasks never finished, e.g. " + str(
                [status(base, headers, t) for t in list(pending)[:3]]) + logs()
            for task_id in list(pending):
                s = status(base, headers, task_id)
                if s["state"] in ("FAILURE", "REVOKED"):
                    raise AssertionError(f"task {task_id} ended {s['state']}: {s}\n{logs()}")
                if s["state"] == "SUCCESS":
                    pending.discard(task_id)
            time.sleep(0.2)

        for task_id in slow[:3]:  # the runs cut by the outage still give the whole answer, once
            assert status(base, headers, task_id)["result"]["content"] == words
        for m in (web, worker):
            assert not logged(m.output(), status=500), m.tail(6000)
            assert not tracebacks(m), tracebacks(m)[:3]


@contextmanager
def write_locked(db_file: Path) -> Iterator[None]:
    """Another connection (another process, as far as the service can tell) holds the file's write lock."""
    holder = sqlite3.connect(db_file, isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def sqlite_service(tmp_path: Path, redis_url: str, machines: list[Machine]) -> tuple[Machine, dict[str, str], Path]:
    db_file = tmp_path / "shared" / "agent_service.db"
    env = {"REDIS_URL": redis_url, "DATABASE_PATH": str(db_file), "DB_BUSY_TIMEOUT_MS": "200",
           "REDIS_KEY_PREFIX": key_prefix(), "WORKER_DRAIN_SECONDS": "3"}
    web, _worker, headers = start_service(tmp_path, env, machines)
    return web, headers, db_file


@pytest.mark.timeout(120)
def test_sqlite_locked_past_its_busy_timeout(tmp_path: Path, redis_server: EmbeddedRedis,
                                             machines: list[Machine]) -> None:
    web, headers, db_file = sqlite_service(tmp_path, redis_server.url, machines)
    base = web.base
    first = wait_state(base, headers, submit(base, headers, {"message": "before the lock"}), timeout=30)
    assert first["state"] == "SUCCESS", first

    with write_locked(db_file):
        write = timed("POST", f"{base}/api/v1/agents/echo/invoke-async", json={"message": "while locked"},
                      headers=headers)
        assert_unavailable(write, "a write while the file is locked")
        login = timed("POST", f"{base}/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD})
        assert_unavailable(login, "a login (it stores a refresh token) while the file is locked")
        health = timed("GET", f"{base}/health/ready")
        assert health.status == 503 and health.elapsed < PROMPT, health
        assert health.body["components"]["database"]["ok"] is False, health

    done = wait_state(base, headers, submit(base, headers, {"message": "after the lock"}), timeout=30)
    assert done["state"] == "SUCCESS" and done["result"]["content"] == "after the lock", done
    wait_until(lambda: ready(base), timeout=10, interval=0.1, message=web.tail)
    token = httpx.post(f"{base}/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD}, timeout=HTTP_TIMEOUT)
    assert token.status_code == 200, token.text
    assert not logged(web.output(), status=500) and not tracebacks(web), web.tail(6000)


@pytest.mark.timeout(120)
def test_sqlite_reads_with_an_api_key_go_on_while_the_write_lock_is_held(
        tmp_path: Path, redis_server: EmbeddedRedis, machines: list[Machine]) -> None:
    web, headers, db_file = sqlite_service(tmp_path, redis_server.url, machines)
    base = web.base
    task = wait_state(base, headers, submit(base, headers, {"message": "read me"}), timeout=30)
    # the key was used just now: its last_used_at needs no update for a minute
    assert timed("GET", f"{base}/api/v1/agents/tasks/{task['task_id']}", headers=headers).status == 200
    with write_locked(db_file):  # WAL: readers are not blocked by a writer
        read = timed("GET", f"{base}/api/v1/agents/tasks/{task['task_id']}", headers=headers)
        assert read.status == 200 and read.body["state"] == "SUCCESS", read
        sessions = timed("GET", f"{base}/api/v1/sessions", headers=headers)
        assert sessions.status == 200, sessions
