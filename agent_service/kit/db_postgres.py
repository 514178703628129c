"""The PostgreSQL driver (asyncpg with a connection pool): what every web and worker machine of a
multi-machine deployment shares. Statements arrive with `?` placeholders and are translated
(and cached) once; a pool that cannot hand out a connection within DB_ACQUIRE_TIMEOUT, a server
that is gone, or a statement past DB_COMMAND_TIMEOUT is a 503, and the pool reconnects by itself
when the server is back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from agent_service.errors import ValidationFailed
from agent_service.kit.db import DatabaseUnavailable, Dialect, Row, UniqueViolation, to_dollar
from agent_service.logging import get_logger

log = get_logger(__name__)
_translate = functools.lru_cache(maxsize=1024)(to_dollar)
# errors that mean "the store cannot answer now", as opposed to a bug in a statement
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    asyncpg.DiskFullError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.QueryCanceledError,
    asyncpg.LockNotAvailableError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def _count(status: str) -> int:
    """Rows changed, from the command tag: "UPDATE 3", "INSERT 0 1", "DELETE 0"."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    log.warning("db.unavailable", dialect="postgresql", error=type(exc).__name__)
    return DatabaseUnavailable()


async def _keep_session(_: Any) -> None:
    """The pool's reset on release, after asyncpg's own rollback of an open transaction. Nothing
    here leaves session state behind (no LISTEN, session advisory lock, cursor or SET), so the
    default reset query would be a second round trip per statement for nothing."""


class _Tx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return _count(await self._conn.execute(_translate(sql), *params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(_translate(sql), list(rows))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = await self._conn.fetchrow(_translate(sql), *params)
        return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.fetch(_translate(sql), *params))


class PostgresDatabase:
    dialect: Dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, pool: Any, *, acquire_timeout: float) -> None:
        self._pool = pool
        self._acquire_timeout = acquire_timeout

    @classmethod
    async def open(cls, url: str, *, min_size: int, max_size: int, acquire_timeout: float,
                   command_timeout: float) -> PostgresDatabase:
        try:
            # min_size=0: the pool starts (and the process serves what needs no SQL) even while the
            # server is down; connections are made on demand and remade after a restart
            pool = await asyncpg.create_pool(url, min_size=min(min_size, max_size), max_size=max_size,
                                             command_timeout=command_timeout, timeout=acquire_timeout,
                                             reset=_keep_session)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        return cls(pool, acquire_timeout=acquire_timeout)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except _UNAVAILABLE:
            self._pool.terminate()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[_Tx]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
                yield _Tx(conn)
        except asyncpg.UniqueViolationError as exc:
            raise UniqueViolation(str(exc)) from None
        except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError):
            # PostgreSQL text cannot hold U+0000 (SQLite can): the client's input, not our fault
            raise ValidationFailed("Text holding a NUL character (\\u0000) cannot be stored or looked up.",
                                   code="nul_character",
                                   errors=[{"path": "$", "message": "NUL characters are not allowed"}]) from None
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn() as tx:
            return await tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        async with self._conn() as tx:
            return await tx.fetchone(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn() as tx:
            return await tx.fetchall(sql, params)

    async def ping(self, *, write: bool = False) -> None:
        async with self._conn() as tx:
            if write:
                # a read-only server (a failed-over replica, a full disk in read-only mode) says so here
                row = await tx.fetchone("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'")
                if row is not None and row[0]:
                    raise DatabaseUnavailable("The database is read-only right now.")
            else:
                await tx.fetchone("SELECT 1")

    @asynccontextmanager
    async def transaction(self, *, immediate: bool = True) -> AsyncIterator[_Tx]:
        """READ COMMITTED; claims lock their rows with `db.for_update` (`immediate` is SQLite's)."""
        async with self._conn() as tx:
            async with tx._conn.transaction():
                yield tx
