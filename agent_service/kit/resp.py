"""The asyncio Redis connection of every pool here, cheaper per command than redis-py's own:

- commands packed by hiredis (C) instead of redis-py's Python packer: the same bytes (redis-py's
  sync client does the same when hiredis is there), about six times less CPU per command;
- a reply that is already in the read buffer is taken without arming the read timeout: the
  replies of a pipeline (or a Round) arrive together, and redis-py would otherwise build and
  cancel an asyncio timeout for each of them, which cost more than parsing the reply. The first
  reply, and any not yet complete, is still read under socket_timeout;
- the pool's check of each connection it hands out (stale bytes, or closed by the server) looks
  at what the connection has received without waiting: redis-py's hiredis parser instead reads
  under a zero timeout, a loop turn, a timer and a cancelled read on every checkout (a tenth of
  the web process's CPU while a thousand SSE followers opened).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # hiredis is optional for redis-py: then its own packer (rediss:// and unix:// URLs use theirs)
    _pack = None


_NOTHING = object()


class BufferedParser(_AsyncHiredisParser):
    """hiredis's parser, able to say whether a whole reply is buffered (taking it aside)."""

    def __init__(self, socket_read_size: int) -> None:
        super().__init__(socket_read_size)
        self._held: Any = _NOTHING

    def on_disconnect(self) -> None:
        self._held = _NOTHING
        super().on_disconnect()  # type: ignore[no-untyped-call]

    def reply_buffered(self, disable_decoding: bool) -> bool:
        if self._held is not _NOTHING:
            return True
        reader = self._reader
        if not self._connected or reader is None:
            return False
        reply = reader.gets(False) if disable_decoding else reader.gets()
        if reply is NOT_ENOUGH_DATA:
            return False
        self._held = reply
        return True

    async def can_read_destructive(self) -> bool:
        """True when the connection holds bytes nobody asked for (the pool then reconnects it);
        ConnectionError when the server closed or reset it. What arrived is already in the
        stream: the transport moves bytes, an EOF or a reset there the moment the loop sees the
        socket readable, so the check needs no wait — and in those cases the read below returns
        or raises at once, as redis-py's own check would."""
        if not self._connected or self._reader is None:
            raise RedisConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        if self._held is not _NOTHING or self._reader.gets() is not NOT_ENOUGH_DATA:
            return True
        stream = self._stream
        if stream is None:
            raise RedisConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        # `_buffer` is private, pinned by tests/test_resp.py: StreamReader has no public "is buffered"
        if stream._buffer or stream.at_eof() or stream.exception() is not None:
            return await self.read_from_socket()  # type: ignore[no-any-return]
        return False

    async def read_response(self, disable_decoding: bool = False) -> Any:
        if self._held is _NOTHING:
            return await super().read_response(disable_decoding)
        reply, self._held = self._held, _NOTHING
        # as the parser's own: a connection error inside the reply is raised, not returned
        if isinstance(reply, RedisConnectionError):
            raise reply
        if isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
            raise reply[0]
        return reply


class PackedConnection(Connection):
    def __init__(self, **kwargs: Any) -> None:
        if _pack is not None:
            kwargs.setdefault("parser_class", BufferedParser)
        super().__init__(**kwargs)

    async def read_response(self, disable_decoding: bool = False, timeout: float | None = None, *,  # noqa: ASYNC109 (redis-py's)
                            disconnect_on_error: bool = True, push_request: bool | None = False) -> Any:
        parser = self._parser
        if timeout is None and isinstance(parser, BufferedParser) and parser.reply_buffered(disable_decoding):
            # nothing to wait for: no timer (see the module's doc), the rest as redis-py does it
            saved, self.socket_timeout = self.socket_timeout, None
            try:
                return await super().read_response(disable_decoding, None, disconnect_on_error=disconnect_on_error,
                                                   push_request=push_request)
            finally:
                self.socket_timeout = saved
        return await super().read_response(disable_decoding, timeout, disconnect_on_error=disconnect_on_error,
                                           push_request=push_request)

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
