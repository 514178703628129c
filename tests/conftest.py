"""Real components: a valkey-server per test session, a SQLite file per test, real arq workers.

Only fixtures (and the marker guard) live here; the helpers they use are in tests/support/."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from arq.worker import get_kwargs

from agent_service.cli.embedded import EmbeddedRedis, free_port
from agent_service.config import Settings, load_settings
from agent_service.kit.fast_worker import FastWorker
from agent_service.worker import build_worker_settings
from tests.support.apps import Client, app_client
from tests.support.environment import TEST_ENV
from tests.support.processes import Live, Process, bootstrap_user, service_argv
from tests.support.waiting import wait_http_ok

CHILD_PROCESS_FIXTURES = {"spawn", "live_service"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep `-m "not e2e"` honest: a test that starts service processes must be marked e2e."""
    unmarked = [item.nodeid for item in items
                if CHILD_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("these tests start child processes but are not marked e2e:\n  "
                                + "\n  ".join(unmarked))


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


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start service child processes ("web" needs PORT, or "worker"); all are stopped afterwards."""
    procs: list[Process] = []

    def start(kind: str, env: dict[str, str], **extra: str) -> Process:
        full_env = {**os.environ, **env, **extra}
        full_env.pop("PYTEST_CURRENT_TEST", None)
        p = Process(service_argv(kind, full_env), full_env, tmp_path / f"{kind}-{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


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
