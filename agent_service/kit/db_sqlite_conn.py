"""The two connections of kit/db_sqlite.py, behind one statement interface (kit/db.Tx).

- `LoopTx`: a plain sqlite3 connection used on the event loop's own thread. A statement on this
  small database takes tens of microseconds, less than the hop to another thread and back costs
  (and far less than waiting for the GIL to come back once the loop is busy). It never waits for
  a lock: busy_timeout is 0, and a statement that finds the file locked by another process raises
  `Busy` at once, before it changed anything, for the caller to run it on the other connection.
- `ThreadTx`: the aiosqlite connection (its own thread, busy_timeout set): the one that waits out
  another process's write lock, and the one that runs statements known to be slow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import aiosqlite

from agent_service.kit.db import DatabaseUnavailable, Row, UniqueViolation
from agent_service.logging import get_logger

log = get_logger("agent_service.kit.db_sqlite")
T = TypeVar("T")
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class Busy(Exception):
    """The loop's connection found the file locked (nothing was changed): use the waiting one."""


@contextmanager
def sql_errors() -> Iterator[None]:
    """Driver errors as the seam's (kit/db.py): nothing of sqlite3 reaches a caller."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            raise UniqueViolation(str(exc)) from None
        raise
    except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
        # locked past busy_timeout, disk full, I/O error: the client may retry, nothing leaks out
        log.warning("db.unavailable", dialect="sqlite", error=type(exc).__name__, detail=str(exc)[:200])
        raise DatabaseUnavailable() from None


class LoopTx:
    """Statements on the loop's thread; each call runs to its end before it returns (no await).
    With `fallback`, a locked file raises `Busy` (the statement can go to the other connection);
    without (inside a transaction, which cannot change connections), it is unavailable."""

    def __init__(self, conn: sqlite3.Connection, *, fallback: bool) -> None:
        self.conn = conn
        self._fallback = fallback

    def run(self, work: Callable[[], T]) -> T:
        with sql_errors():
            try:
                return work()
            except sqlite3.OperationalError as exc:
                if self._fallback and getattr(exc, "sqlite_errorcode", None) in BUSY_CODES:
                    raise Busy() from None
                raise

    def execute_now(self, sql: str, params: Sequence[Any] = ()) -> int:
        def go() -> int:
            before = self.conn.total_changes
            self.conn.execute(sql, params).close()
            return self.conn.total_changes - before

        return self.run(go)

    def fetchall_now(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        def go() -> list[Row]:
            cur = self.conn.execute(sql, params)
            try:
                return list(cur.fetchall())
            finally:
                cur.close()

        return self.run(go)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.execute_now(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.run(lambda: self.conn.executemany(sql, rows).close())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        def go() -> Row | None:
            cur = self.conn.execute(sql, params)
            try:
                row: Row | None = cur.fetchone()
                return row
            finally:
                cur.close()

        return self.run(go)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.fetchall_now(sql, params)


class ThreadTx:
    """Statements on aiosqlite's thread: one trip there and back each."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with sql_errors():
            # the rows it changed from the connection's counter (no trigger exists to count on top)
            before = self.conn.total_changes
            await self.conn.execute_fetchall(sql, params)
            return self.conn.total_changes - before

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with sql_errors():
            await self.conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with sql_errors():
            async with self.conn.execute(sql, params) as cur:
                row: Row | None = await cur.fetchone()
                return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with sql_errors():
            return list(await self.conn.execute_fetchall(sql, params))
