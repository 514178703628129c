"""Opaque pagination cursors: URL-safe base64 of the last row's sort key."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TypeVar

import msgspec

from agent_service.errors import ValidationFailed

MAX_CURSOR_LENGTH = 512
T = TypeVar("T")


def encode(*parts: str | int) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(parts))).decode().rstrip("=")


def decode(cursor: str, arity: int) -> list[str | int]:
    """The parts of a cursor made by `encode`; anything else is a 422 naming `$.cursor`."""
    bad = ValidationFailed("The cursor is not valid.", errors=[{"path": "$.cursor", "message": "Invalid cursor"}])
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise bad
    try:
        parts = msgspec.json.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise bad from None
    if not isinstance(parts, list) or len(parts) != arity or not all(isinstance(p, str | int) for p in parts):
        raise bad
    return parts


# Keyset pagination, newest first, over (created_at, id): the WHERE fragment for "after the last
# row of the previous page", and its parameters.
KEYSET_SQL = "(created_at < ? OR (created_at = ? AND id < ?))"


def keyset_params(before: tuple[str, str]) -> list[str]:
    return [before[0], before[0], before[1]]


def before_of(cursor: str | None) -> tuple[str, str] | None:
    """The (created_at, id) a page cursor points after; None for the first page."""
    if not cursor:
        return None
    created_at, last_id = decode(cursor, 2)
    return str(created_at), str(last_id)


def page_of(rows: list[T], limit: int, key: Callable[[T], tuple[str, str]]) -> tuple[list[T], str | None]:
    """Given up to limit+1 rows, the page and the cursor of the next one (None on the last page)."""
    page = rows[:limit]
    return page, (encode(*key(page[-1])) if len(rows) > limit else None)
