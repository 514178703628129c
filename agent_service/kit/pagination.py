"""The one pagination helper: keyset pages, newest first, over (a time column, an id column), with
an opaque cursor (URL-safe base64 of the last row's key). Every list of the API uses it.

    KEYSET = Keyset(time="created_at", id="id")
    after = KEYSET.after(cursor)                   # validated before any SQL (422 on `$.cursor`)
    sql += " AND " + after.sql; params += after.params
    rows = await db.fetchall(sql + KEYSET.order_limit, (*params, limit + 1))
    items, next_cursor = KEYSET.page(rows, limit)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from agent_service.clock import iso
from agent_service.errors import ValidationFailed

MAX_CURSOR_LENGTH = 512


class Keyed(Protocol):
    """A row whose columns are read by name (sqlite3.Row, asyncpg.Record, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


R = TypeVar("R", bound=Keyed)


def _bad() -> ValidationFailed:
    return ValidationFailed("The cursor is not valid; pass the `next_cursor` of a previous page unchanged.",
                            errors=[{"path": "$.cursor", "message": "Invalid cursor"}])


def encode(*parts: str | int) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(parts))).decode().rstrip("=")


def decode(cursor: str, arity: int) -> list[str | int]:
    """The parts of a cursor made by `encode`; anything else is a 422 naming `$.cursor`."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise _bad()
    try:
        parts = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise _bad() from None
    if not isinstance(parts, list) or len(parts) != arity or not all(isinstance(p, str | int) for p in parts):
        raise _bad()
    return parts


class After(msgspec.Struct, frozen=True):
    sql: str
    params: list[Any]


class Keyset(msgspec.Struct, frozen=True, kw_only=True):
    time: str = "created_at"
    id: str = "id"
    int_ids: bool = False

    @property
    def order_limit(self) -> str:
        return f" ORDER BY {self.time} DESC, {self.id} DESC LIMIT ?"

    def after(self, cursor: str | None) -> After | None:
        """'Rows after the cursor's row', or None for the first page. `time <= ?` keeps it an index
        range; the OR only breaks ties inside one instant."""
        if cursor is None:
            return None
        when, last_id = decode(cursor, 2)
        if not isinstance(when, str) or isinstance(last_id, int) != self.int_ids:
            raise _bad()
        if isinstance(last_id, int) and not 0 < last_id < 2**63:  # a row id SQL can hold
            raise _bad()
        try:
            parsed = datetime.fromisoformat(when)
        except ValueError:
            raise _bad() from None
        if parsed.tzinfo is None:
            raise _bad()
        at = iso(parsed)  # re-normalised: string order in SQL is time order, whatever came back
        return After(sql=f"{self.time} <= ? AND ({self.time} < ? OR {self.id} < ?)", params=[at, at, last_id])

    def page(self, rows: Sequence[R], limit: int) -> tuple[list[R], str | None]:
        """Given up to limit+1 rows (mappings with the key columns), the page and the next cursor."""
        page = list(rows[:limit])
        if len(rows) <= limit:
            return page, None
        last = page[-1]
        return page, encode(last[self.time], last[self.id])


def where(clauses: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""
