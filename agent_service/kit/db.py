"""The SQL seam: one interface over SQLite (aiosqlite, the zero-setup default) and PostgreSQL
(asyncpg with a pool, for many machines). Repositories write portable SQL with `?` placeholders
and ISO-8601 UTC text timestamps (fixed width, so string order is time order, and timezone-aware
when read back in both); every dialect difference lives here and in the two drivers:

| difference | SQLite | PostgreSQL |
|---|---|---|
| placeholders | `?` | `$1…$n` (translated here) |
| a claim's row lock | BEGIN IMMEDIATE (the whole file) | `… FOR UPDATE` (`db.for_update`) |
| migrations lock | BEGIN IMMEDIATE | `pg_advisory_xact_lock` |
| auto ids | AUTOINCREMENT | identity column (per-dialect migration) |
| rows changed | cursor.rowcount | the command tag (`UPDATE 3`) |

A store that cannot answer (locked past its timeout, disk full, server gone, pool exhausted)
raises `DatabaseUnavailable`, a 503 with Retry-After; a broken unique constraint raises
`UniqueViolation`. Driver exceptions never reach a caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

from agent_service.config import Settings
from agent_service.errors import ServiceUnavailable

Dialect = Literal["sqlite", "postgresql"]
RETRY_AFTER = "2"


class Row(Protocol):
    """A result row: columns by name or position (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: str | int, /) -> Any: ...

    def keys(self) -> Any: ...


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"

    def __init__(self, detail: str = "The database is unavailable right now; try again shortly.") -> None:
        super().__init__(detail, headers={"Retry-After": RETRY_AFTER})


class UniqueViolation(Exception):
    """An INSERT or UPDATE broke a unique constraint (e.g. two sign-ups with one email)."""


class Tx(Protocol):
    """Statements inside one transaction."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


class Database(Tx, Protocol):
    """Autocommit statements, and `transaction()` for work that must be atomic."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def for_update(self) -> str:
        """Appended to a SELECT that claims the rows it reads until the transaction ends."""
        ...

    def transaction(self, *, immediate: bool = True) -> AbstractAsyncContextManager[Tx]: ...

    async def ping(self, *, write: bool = False) -> None:
        """Raise DatabaseUnavailable unless the database answers (and, with `write`, can write)."""
        ...

    async def close(self) -> None: ...


def to_dollar(sql: str) -> str:
    """`?` placeholders as `$1…$n`, leaving quoted text alone."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


def dialect_of(settings: Settings) -> Dialect:
    return "postgresql" if settings.database_url else "sqlite"


def check_database_url(url: str) -> str:
    """Settings validated its shape already; asyncpg takes postgres:// as well as postgresql://."""
    return url
