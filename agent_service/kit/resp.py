"""Redis commands packed by hiredis (C) instead of redis-py's Python packer on asyncio
connections: the same bytes (redis-py's sync client does the same when hiredis is there), about
six times less CPU per command, which a request path of several commands per request notices."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import Connection

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # hiredis is optional for redis-py: then its own packer (rediss:// and unix:// URLs use theirs)
    _pack = None


class PackedConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        if _pack is None:
            return super().pack_command(*args)
        first = args[0]
        # a command name with a space (`SCRIPT LOAD`) is several words, as redis-py sends it
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_pack(args)]
        except TypeError:  # a value redis-py refuses (None, bool) or encodes itself (memoryview)
            return super().pack_command(*args)
