"""Injectable time: services take a Clock so tests move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """Fixed-width UTC text so SQL ordering by string is ordering by time."""
    if dt is None:
        return None
    if dt.tzinfo is not UTC:  # most are UTC already (utcnow): no conversion for them
        dt = dt.astimezone(UTC)
    return dt.isoformat(timespec="microseconds")


def parse_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
