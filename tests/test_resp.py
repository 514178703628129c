"""kit/resp.py against a real valkey: the same replies as redis-py's own connection, errors as
redis-py raises them, no read timer for replies already buffered, and a frozen server still timed out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis._parsers.hiredis as hiredis_parser
import redis.asyncio.connection as redis_connection
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError, TimeoutError

from agent_service.cli.embedded import EmbeddedRedis
from agent_service.kit.resp import BufferedParser, PackedConnection

pytestmark = pytest.mark.sqlite_only  # no SQL here


def client(url: str, *, timeout: float = 2.0) -> Redis:
    pool = BlockingConnectionPool.from_url(url, connection_class=PackedConnection, socket_timeout=timeout,
                                           socket_connect_timeout=timeout, max_connections=4, timeout=timeout)
    return Redis(connection_pool=pool)


@pytest.fixture
async def packed(redis_url: str) -> AsyncIterator[Redis]:
    r = client(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
def timers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every read timeout redis-py arms, by its length."""
    armed: list[float] = []
    real = redis_connection.async_timeout

    def counting(delay: float | None) -> Any:
        armed.append(delay or 0.0)
        return real(delay)

    monkeypatch.setattr(redis_connection, "async_timeout", counting)
    yield armed


async def test_pipeline_replies_are_those_of_redis_py_and_only_the_first_is_timed(packed: Redis,
                                                                                 timers: list[float]) -> None:
    await packed.ping()
    timers.clear()
    pipe = packed.pipeline(transaction=False)
    for i in range(20):
        pipe.set(f"resp:k{i}", i)
        pipe.incr(f"resp:k{i}")
        pipe.get(f"resp:k{i}")
    replies = await pipe.execute()
    assert replies == [x for i in range(20) for x in (True, i + 1, str(i + 1).encode())]
    # one timer for the first reply (and for any read that found the buffer short), not sixty
    assert 1 <= len(timers) <= 5, len(timers)
    conn = await packed.connection_pool.get_connection()
    try:
        assert isinstance(conn._parser, BufferedParser)  # type: ignore[attr-defined]
    finally:
        await packed.connection_pool.release(conn)


async def test_an_error_reply_inside_a_pipeline_is_raised_as_redis_py_does(packed: Redis) -> None:
    await packed.set("resp:text", "not a number")
    pipe = packed.pipeline(transaction=False)
    pipe.get("resp:text")
    pipe.incr("resp:text")
    pipe.get("resp:text")
    assert [type(r) for r in await pipe.execute(raise_on_error=False)] == [bytes, ResponseError, bytes]
    pipe = packed.pipeline(transaction=False)
    pipe.incr("resp:text")
    with pytest.raises(ResponseError):
        await pipe.execute()
    assert await packed.get("resp:text") == b"not a number"  # the connection is still in step


async def test_a_frozen_server_still_times_out(tmp_path_factory: pytest.TempPathFactory) -> None:
    frozen = EmbeddedRedis(tmp_path_factory.mktemp("frozen"), appendonly=False).start(stdout=subprocess.DEVNULL)
    r = client(frozen.url, timeout=0.5)
    assert frozen.process is not None
    pid = frozen.process.pid
    try:
        await r.ping()
        os.kill(pid, signal.SIGSTOP)
        try:
            pipe = r.pipeline(transaction=False)
            pipe.set("a", 1)
            pipe.get("a")
            with pytest.raises(TimeoutError):
                await pipe.execute()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await r.get("a") in (None, b"1")  # back: a fresh connection answers
    finally:
        with contextlib.suppress(Exception):
            await r.aclose()
        frozen.stop()


async def bounded(check: Any, what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_checkout_waits_for_nothing(packed: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    armed: list[float | None] = []
    real = hiredis_parser.async_timeout

    def counting(delay: float | None) -> Any:
        armed.append(delay)
        return real(delay)

    monkeypatch.setattr(hiredis_parser, "async_timeout", counting)
    for i in range(10):
        await packed.set("resp:checkout", i)
    assert await packed.get("resp:checkout") == b"9"
    assert armed == []  # redis-py's parser arms a zero timeout (and waits a loop turn) on every checkout


async def test_a_pooled_connection_with_stale_bytes_is_replaced(packed: Redis) -> None:
    await packed.set("resp:stale", "the value")
    pool = packed.connection_pool
    conn = await pool.get_connection()
    await conn.send_command("PING")  # its reply is never read: the connection is out of step
    stream = conn._parser._stream  # type: ignore[attr-defined]
    await bounded(lambda: bool(stream._buffer), "the PONG arrived")
    await pool.release(conn)
    assert await packed.get("resp:stale") == b"the value"  # not the stale PONG
    assert await packed.ping() is True


async def test_a_pooled_connection_closed_by_the_server_is_replaced(packed: Redis, redis_url: str) -> None:
    pool = packed.connection_pool
    conn = await pool.get_connection()
    await conn.send_command("CLIENT", "ID")
    client_id = await conn.read_response()
    stream = conn._parser._stream  # type: ignore[attr-defined]
    await pool.release(conn)
    other = client(redis_url)
    try:
        assert await other.client_kill_filter(_id=client_id) == 1
    finally:
        await other.aclose()
    await bounded(stream.at_eof, "the server's close arrived")
    assert await packed.set("resp:after-kill", "yes") is True
    assert await packed.get("resp:after-kill") == b"yes"


class ResettingHop:
    """A TCP hop to valkey whose client side can be reset (RST), as a load balancer's or a NAT's
    idle timeout does: asyncio then keeps the error in the stream, neither bytes nor an EOF."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.clients: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.clients.append(down_w)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w))

    def reset(self) -> None:
        for writer in self.clients:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_pooled_connection_reset_by_the_peer_is_replaced(redis_url: str) -> None:
    hop = ResettingHop(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    r = client(f"redis://127.0.0.1:{await hop.start()}")
    try:
        await r.set("resp:reset", "kept")
        conn = await r.connection_pool.get_connection()
        stream = conn._parser._stream  # type: ignore[attr-defined]
        await r.connection_pool.release(conn)
        hop.reset()
        await bounded(lambda: stream.exception() is not None, "the reset arrived")
        assert not stream.at_eof() and not stream._buffer  # what the check must still catch
        assert await r.get("resp:reset") == b"kept"  # a fresh connection, not a failed request
    finally:
        await r.aclose()
        await hop.close()
