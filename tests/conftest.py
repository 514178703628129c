"""Real components: a valkey-server per test session, a SQLite file per test, real arq workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from arq.worker import get_kwargs

from agent_service.app import create_app
from agent_service.cli import bootstrap
from agent_service.cli.embedded import EmbeddedRedis, free_port
from agent_service.config import Settings, load_settings
from agent_service.identity import accounts as api_keys
from agent_service.identity import accounts as users
from agent_service.identity.schemas import SCOPES, USER_SCOPES, UserCreate
from agent_service.kit.fast_worker import FastWorker
from agent_service.worker import build_worker_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


TEST_ENV = {
    "APP_ENV": "test",
    "JWT_SECRET": "test-only-secret-0123456789abcdefghijklmnopqrstuvwxyz",
    "LOG_JSON": "true",
    "LOG_LEVEL": "INFO",
    "JOB_RETRY_BACKOFF_BASE": "0.05",
    "JOB_RETRY_BACKOFF_MAX": "0.2",
    "WORKER_POLL_DELAY": "0.02",
    "WORKER_HEALTH_INTERVAL": "1",
    # limits high enough that only the tests about limits meet them (they set their own)
    "RATE_LIMIT_FREE": "100000",
    "RATE_LIMIT_STREAM_FREE": "100000",
    "RATE_LIMIT_LOGIN_PER_IP": "100000",
    "JOB_RATE_LIMIT_ALL": "100000",
    "JOB_RATE_LIMIT_INVOKE": "100000",
    "JOB_RATE_LIMIT_STREAM": "100000",
}


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """The environment of this test's service: its own database, queue and var dir."""
    return {
        **TEST_ENV,
        "REDIS_URL": redis_url,
        "DATABASE_PATH": str(tmp_path / "agent_service.db"),
        "VAR_DIR": str(tmp_path / "var"),
        "QUEUE_NAME": f"arq:test-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture
def make_settings(env: dict[str, str]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return load_settings(env, env_file=None, **overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


class Client(httpx.AsyncClient):
    app: Any


async def add_user(app: Any, email: str, *, admin: bool = False, scopes: tuple[str, ...] | None = None,
                   tier: str = "free", password: str = "correct horse battery") -> str:
    """Create a user in the app's database and return a fresh API key for them."""
    deps = app.state.deps
    roles: list[Any] = ["user", "admin"] if admin else ["user"]
    user = await users.create_user(deps, UserCreate(email=email, password=password, roles=roles, tier=tier))  # type: ignore[arg-type]
    granted = scopes or (SCOPES if admin else USER_SCOPES)
    return await api_keys.bootstrap_key(deps, user.id, name="test", scopes=granted, tier=tier)


@asynccontextmanager
async def app_client(settings: Settings, *, authenticated: bool = True) -> AsyncIterator[Client]:
    """The app for `settings`, lifespan and all, behind an in-process HTTP client that sends the
    API key of a fresh ordinary user (unless `authenticated=False`)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with Client(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            c.app = app
            if authenticated:
                c.headers["X-API-Key"] = await add_user(app, f"user-{uuid.uuid4().hex[:8]}@example.com")
            yield c


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with app_client(settings) as c:
        yield c


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[[Settings], Any]]:
    """Run real arq workers (FastWorker) inside the test's event loop."""
    running: list[tuple[FastWorker, asyncio.Task[None]]] = []

    async def start(settings: Settings, **kwargs: Any) -> FastWorker:
        worker = FastWorker(**{**get_kwargs(build_worker_settings(settings)), "handle_signals": False, **kwargs})
        task = asyncio.create_task(worker.async_run())
        running.append((worker, task))
        return worker

    yield start
    for worker, task in running:
        task.cancel()
        try:
            await asyncio.wait_for(task, 5)
        except (asyncio.CancelledError, TimeoutError):
            pass
        await worker.close()


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async or sync predicate until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


class Process:
    """A child process (uvicorn or worker) with its output captured to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    procs: list[Process] = []

    def start(kind: str, env: dict[str, str], **extra: str) -> Process:
        full_env = {**os.environ, **env, **extra}
        full_env.pop("PYTEST_CURRENT_TEST", None)
        if kind == "web":
            argv = [sys.executable, "-m", "uvicorn", "agent_service.app:create_app", "--factory",
                    "--host", "127.0.0.1", "--port", full_env["PORT"]]
        else:
            argv = [sys.executable, "-m", "agent_service", "worker"]
        p = Process(argv, full_env, tmp_path / f"{kind}-{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def wait_http_ok(url: str, *, timeout: float = 20.0, on_fail: Callable[[], str] = lambda: "") -> None:
    """Block until GET `url` answers 200 (a process we started is up), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {timeout}s\n{on_fail()}")
        time.sleep(0.1)


class Live:
    def __init__(self, base: str, web: Process, worker: Process, api_key: str) -> None:
        self.base, self.web, self.worker = base, web, worker
        self.headers = {"X-API-Key": api_key}


def bootstrap_user(env: dict[str, str], email: str = "e2e@example.com", *, admin: bool = False) -> str:
    """A user and API key written straight to the service's SQLite file (no HTTP needed)."""
    settings = load_settings(env, env_file=None)
    asyncio.run(bootstrap.create_user(settings, email=email, password="e2e password!", admin=admin))
    return asyncio.run(bootstrap.create_api_key(settings, email=email, name="e2e"))


@pytest.fixture
def live_service(env: dict[str, str], spawn: Callable[..., Process]) -> Iterator[Live]:
    """uvicorn on 127.0.0.1 plus a worker process, sharing the test's Redis and SQLite file."""
    api_key = bootstrap_user(env)
    port = free_port()
    worker = spawn("worker", env)
    web = spawn("web", env, PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{base}/health/ready", on_fail=lambda: web.output()[-3000:] + worker.output()[-3000:])
    yield Live(base, web, worker, api_key)
