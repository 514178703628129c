"""Real components: a valkey-server per test session, a SQL database per test, real arq workers.

Every test whose fixtures reach SQL (`env`, and so `settings`, `client`, `start_worker`,
`live_service`, …, or `test_database`) runs twice, as `test_x[sqlite]` on a SQLite file and as
`test_x[postgresql]` on a fresh database of the session's PostgreSQL server (or of the server at
TEST_DATABASE_URL). `@pytest.mark.sqlite_only` (a test or a module's `pytestmark`) keeps a test
that never touches SQL, or that is about SQLite itself, to the SQLite run; `postgresql_only` is the
converse.

Only fixtures (and the marker guards) live here; the helpers they use are in tests/support/."""

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
from agent_service.cli.embedded_postgres import EmbeddedPostgres
from agent_service.config import Settings, load_settings
from agent_service.kit.fast_worker import FastWorker
from agent_service.worker import build_worker_settings
from tests.support.apps import Client, app_client
from tests.support.databases import (
    BACKENDS,
    PostgresDatabases,
    TestDatabase,
    embedded_postgres_server,
    external_url,
)
from tests.support.environment import TEST_ENV
from tests.support.jwks_server import AUDIENCE, ISSUER, JwksServer
from tests.support.processes import Live, Process, bootstrap_user, service_argv
from tests.support.waiting import wait_http_ok

CHILD_PROCESS_FIXTURES = {"spawn", "live_service"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: runs on SQLite only (no SQL in it, or about SQLite itself)")
    config.addinivalue_line("markers", "postgresql_only: runs on PostgreSQL only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that reaches the `backend` fixture runs once per SQL backend (see the module doc)."""
    if "backend" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if "backend" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return  # the test chose its backends itself
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
    postgresql_only = metafunc.definition.get_closest_marker("postgresql_only") is not None
    if sqlite_only and postgresql_only:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: sqlite_only and postgresql_only")
    if sqlite_only:
        return  # unparametrized: the backend fixture's default, SQLite
    metafunc.parametrize("backend", ("postgresql",) if postgresql_only else BACKENDS, indirect=True)


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


@pytest.fixture(scope="session")
def embedded_postgres() -> Iterator[EmbeddedPostgres]:
    """The session's own PostgreSQL server (started on first use, removed at the end); skipped when
    TEST_DATABASE_URL names a server to use instead."""
    if external_url():
        pytest.skip("TEST_DATABASE_URL is set: the tests use that PostgreSQL server")
    with embedded_postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[PostgresDatabases]:
    """Fresh databases on the session's PostgreSQL server or on TEST_DATABASE_URL's (dropped at the end)."""
    admin_url = external_url()
    if admin_url is None:
        admin_url = request.getfixturevalue("embedded_postgres").url()
    databases = PostgresDatabases(admin_url)
    yield databases
    databases.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """"sqlite" or "postgresql": set per test by pytest_generate_tests (SQLite when not parametrized)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A fresh, empty PostgreSQL database of this test's own (dropped afterwards); None on SQLite."""
    if backend != "postgresql":
        yield None
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def test_database(backend: str, database_url: str | None, tmp_path: Path) -> TestDatabase:
    """This test's SQL store, to open directly: `db = await test_database.open()` (migrated)."""
    return TestDatabase(backend, tmp_path / "test.db", database_url)


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    client = sync_redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def env(tmp_path: Path, redis_url: str, database_url: str | None) -> dict[str, str]:
    """The environment of this test's service: its own database (a SQLite file, or a PostgreSQL
    database in DATABASE_URL), queue and var dir."""
    return {
        **TEST_ENV,
        "REDIS_URL": redis_url,
        # empty is unset: a DATABASE_URL of the developer's shell must not reach a SQLite run's children
        "DATABASE_URL": database_url or "",
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
        try:
            await worker.close()
        except asyncio.CancelledError:
            # arq's close cancels the jobs still running and gathers them: one caught finishing (in
            # its shielded finish_job) ends cancelled, its CancelledError surfaces here, and the rest
            # of close is skipped while the other jobs may still be ending. Wait for those, then do
            # that rest (the shutdown hook closes the worker's stores); only a cancellation of this
            # teardown itself goes on up.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            pending = [t for t in worker.tasks.values() if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=5)
            if worker.on_shutdown is not None:
                await worker.on_shutdown(worker.ctx)
            await worker.pool.aclose()


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


# an external OIDC issuer (RS256 over a real JWKS endpoint) and an app that trusts it
@pytest.fixture
def idp() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


@pytest.fixture
async def oidc_client(make_settings: Callable[..., Settings], idp: JwksServer) -> AsyncIterator[Client]:
    settings = make_settings(jwt_jwks_url=idp.url, jwt_external_issuer=ISSUER, jwt_external_audience=AUDIENCE)
    async with app_client(settings) as c:
        yield c
