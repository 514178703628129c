"""Opaque pagination cursors: URL-safe base64 of the last row's sort key."""

from __future__ import annotations

import base64
import binascii

import msgspec

from agent_service.errors import ValidationFailed

MAX_CURSOR_LENGTH = 512


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
