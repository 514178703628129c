"""The wires: send a `Call` over HTTP with httpx (sync and async twins), retrying what the policy
allows, and open an event stream as an iterator of lines. Everything protocol-specific about HTTP
stays here and in _routes.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import msgspec

from agent_service.client._errors import ConnectionFailed, api_error
from agent_service.client._routes import API_PREFIX, Call, Reply, RetryPolicy, base_url

USER_AGENT = "agent-service-client/0.1"
_json = msgspec.json.Encoder()


def _request(http: httpx.Client | httpx.AsyncClient, call: Call, credentials: dict[str, str],
             read_timeout: float | None) -> httpx.Request:
    headers = {**(credentials if call.authenticated else {}), **call.headers}
    content = None
    if call.body is not None:
        content = _json.encode(call.body)
        headers["Content-Type"] = "application/json"
    timeout = http.timeout
    if read_timeout is not None:
        timeout = httpx.Timeout(timeout.connect, read=read_timeout, write=timeout.write, pool=timeout.pool)
    return http.build_request(call.method, API_PREFIX + call.path, params=call.params, headers=headers,
                              content=content, timeout=timeout)


def _failed(exc: httpx.TransportError) -> ConnectionFailed:
    err = ConnectionFailed(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


class Wire:
    def __init__(self, url: str, *, timeout: float, transport: httpx.BaseTransport | None,
                 retry: RetryPolicy) -> None:
        self.http = httpx.Client(base_url=base_url(url), timeout=timeout, transport=transport,
                                 headers={"User-Agent": USER_AGENT})
        self.retry = retry
        self.credentials: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call) -> Reply:
        attempt = 0
        while True:
            try:
                resp = self.http.send(_request(self.http, call, self.credentials, None))
            except httpx.TransportError as exc:
                delay = self.retry.delay(call, attempt, None)
                if delay is None:
                    raise _failed(exc) from exc
            else:
                reply = Reply(resp.status_code, resp.headers, resp.content)
                delay = self.retry.delay(call, attempt, reply)
                if delay is None:
                    return reply
            time.sleep(delay)
            attempt += 1

    @contextmanager
    def open_stream(self, call: Call, *, read_timeout: float | None = None) -> Iterator[Iterator[str]]:
        """The 200's body as lines; an error answer raises its ApiError, a broken connection (also
        while reading) ConnectionFailed."""
        try:
            resp = self.http.send(_request(self.http, call, self.credentials, read_timeout), stream=True)
        except httpx.TransportError as exc:
            raise _failed(exc) from exc
        try:
            if resp.status_code != 200:
                try:
                    content = resp.read()
                except httpx.TransportError as exc:
                    raise _failed(exc) from exc
                raise api_error(resp.status_code, resp.headers, content)
            yield _lines(resp)
        finally:
            resp.close()


def _lines(resp: httpx.Response) -> Iterator[str]:
    try:
        yield from resp.iter_lines()
    except httpx.TransportError as exc:
        raise _failed(exc) from exc


class AsyncWire:
    def __init__(self, url: str, *, timeout: float, transport: httpx.AsyncBaseTransport | None,
                 retry: RetryPolicy) -> None:
        self.http = httpx.AsyncClient(base_url=base_url(url), timeout=timeout, transport=transport,
                                      headers={"User-Agent": USER_AGENT})
        self.retry = retry
        self.credentials: dict[str, str] = {}

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, call: Call) -> Reply:
        attempt = 0
        while True:
            try:
                resp = await self.http.send(_request(self.http, call, self.credentials, None))
            except httpx.TransportError as exc:
                delay = self.retry.delay(call, attempt, None)
                if delay is None:
                    raise _failed(exc) from exc
            else:
                reply = Reply(resp.status_code, resp.headers, resp.content)
                delay = self.retry.delay(call, attempt, reply)
                if delay is None:
                    return reply
            await asyncio.sleep(delay)
            attempt += 1

    @asynccontextmanager
    async def open_stream(self, call: Call, *, read_timeout: float | None = None) -> AsyncIterator[AsyncIterator[str]]:
        try:
            resp = await self.http.send(_request(self.http, call, self.credentials, read_timeout), stream=True)
        except httpx.TransportError as exc:
            raise _failed(exc) from exc
        try:
            if resp.status_code != 200:
                try:
                    content = await resp.aread()
                except httpx.TransportError as exc:
                    raise _failed(exc) from exc
                raise api_error(resp.status_code, resp.headers, content)
            yield _alines(resp)
        finally:
            await resp.aclose()


async def _alines(resp: httpx.Response) -> AsyncIterator[str]:
    try:
        async for line in resp.aiter_lines():
            yield line
    except httpx.TransportError as exc:
        raise _failed(exc) from exc
