"""The SQLite driver (aiosqlite): one WAL-mode file shared by the web and worker processes of one
machine, with busy_timeout so a writer waits for the other process instead of failing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from agent_service.kit.db import DatabaseUnavailable, Dialect, Row, UniqueViolation
from agent_service.kit.private_files import create_private_file, make_private_dir
from agent_service.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


async def _guard(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            raise UniqueViolation(str(exc)) from None
        raise
    except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
        # locked past busy_timeout, disk full, I/O error: the client may retry, nothing leaks out
        log.warning("db.unavailable", dialect="sqlite", error=type(exc).__name__, detail=str(exc)[:200])
        raise DatabaseUnavailable() from None


class _Tx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async def go() -> int:
            # one trip to the connection's thread (a cursor would take a second one to close); the
            # rows it changed from the connection's counter (no trigger exists to count on top)
            before = self._conn.total_changes
            await self._conn.execute_fetchall(sql, params)
            return self._conn.total_changes - before

        return await _guard(go)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async def go() -> None:
            await self._conn.executemany(sql, rows)

        await _guard(go)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async def go() -> Row | None:
            async with self._conn.execute(sql, params) as cur:
                row: Row | None = await cur.fetchone()
                return row

        return await _guard(go)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async def go() -> list[Row]:
            async with self._conn.execute(sql, params) as cur:
                return list(await cur.fetchall())

        return await _guard(go)


class SqliteDatabase:
    """Autocommit connection; multi-statement work goes through `transaction()`.

    One connection serves the whole process, so every statement holds a lock while it runs:
    two coroutines must never interleave statements inside one BEGIN, and a write must never
    run while a read statement is still open on the connection — SQLite would then answer
    "database is locked" at once instead of waiting out busy_timeout for the other process.
    """

    dialect: Dialect = "sqlite"
    for_update = ""  # BEGIN IMMEDIATE already holds the file's write lock

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._tx = _Tx(conn)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, *, busy_timeout_ms: int = 5000) -> SqliteDatabase:
        if path not in (":memory:", ""):  # "" is a private temporary database
            # SQLite would create the file 0644, and its -wal and -shm copy the file's mode: made
            # 0600 first (in a 0700 directory if the directory is new), all three stay private
            make_private_dir(Path(path).parent)
            create_private_file(path)
        pending = aiosqlite.connect(path, isolation_level=None)
        # aiosqlite runs each connection in a non-daemon thread, which keeps a stopping process
        # alive if the connection is never closed (a worker that lost Redis); daemon it (private
        # attribute, pinned by a contract test)
        pending._thread.daemon = True
        conn = await pending
        conn.row_factory = aiosqlite.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return cls(conn)

    async def close(self) -> None:
        await self._conn.close()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._lock:
            return await self._tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._lock:
            return await self._tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            return await self._tx.fetchall(sql, params)

    async def ping(self, *, write: bool = False) -> None:
        async with self._lock:
            if not write:
                await self._tx.fetchone("SELECT 1")
                return
            # a write that changes nothing still needs the write lock: proves the file is writable
            async with self._begin(immediate=True):
                await self._tx.execute("UPDATE schema_migrations SET version = version WHERE 0")

    @asynccontextmanager
    async def transaction(self, *, immediate: bool = True) -> AsyncIterator[_Tx]:
        """BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock between processes."""
        async with self._lock, self._begin(immediate=immediate):
            yield self._tx

    @asynccontextmanager
    async def _begin(self, *, immediate: bool) -> AsyncIterator[None]:
        await self._tx.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield
        except BaseException:  # whatever stopped the transaction (cancel included) must not leave it open
            try:
                await self._conn.execute("ROLLBACK")
            except (sqlite3.Error, OSError):
                log.warning("db.rollback_failed")
            raise
        else:
            await self._tx.execute("COMMIT")
