"""`GET /api/v1/ws` as the tests drive it: a real WebSocket client (the `websockets` package) that
sends and receives JSON messages, each receive bounded by a timeout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

WS_PATH = "/api/v1/ws"


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + WS_PATH


class Feed:
    """One connection: `send(type=…, …)`, `recv()` the next message, `until(pred)` the messages up to
    the first that matches. `closed()` waits for the server's close and returns (code, reason)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, **message: Any) -> None:
        await self.conn.send(json.dumps(message))

    async def recv(self, timeout: float = 15) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        while True:
            seen.append(await self.recv(timeout))
            if predicate(seen[-1]):
                return seen

    async def closed(self, timeout: float = 15) -> tuple[int | None, str]:
        """Read until the server closes (what arrives meanwhile is dropped); its close code and reason."""
        async def drain() -> None:
            try:
                while True:
                    await self.conn.recv()
            except ConnectionClosed:
                return

        await asyncio.wait_for(drain(), timeout)
        return self.conn.close_code, self.conn.close_reason or ""


@asynccontextmanager
async def open_feed(base: str, *, headers: dict[str, str] | None = None, token: str | None = None,
                    origin: str | None = None, ready: bool = True) -> AsyncIterator[Feed]:
    """Connect (a credential header, or `token` sent as the first message); with `ready`, the
    `ready` message is read (and checked) before the feed is handed over."""
    async with connect(ws_url(base), additional_headers=headers or {}, origin=origin,  # type: ignore[arg-type]
                       open_timeout=10, close_timeout=5) as conn:
        feed = Feed(conn)
        if token is not None:
            await feed.send(type="auth", token=token)
        if ready:
            first = await feed.recv()
            assert first["type"] == "ready", first
        yield feed
