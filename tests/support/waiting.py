"""Bounded waits on something observable: poll a condition until it holds, fail after a timeout.

Tests wait with these instead of sleeping a guessed time and then asserting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx


async def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async or sync predicate until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02,
               message: Callable[[], str] = lambda: "") -> Any:
    """`wait_for` for synchronous code (tests that drive child processes): poll a sync predicate
    until it returns something truthy and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = message()
            raise AssertionError(f"condition not met within {timeout}s" + (f": {detail}" if detail else ""))
        time.sleep(interval)


def wait_http_ok(url: str, *, timeout: float = 20.0, on_fail: Callable[[], str] = lambda: "") -> None:
    """Block until GET `url` answers 200 (a process we started is up), or fail after `timeout`."""

    def ok() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout=timeout, interval=0.1, message=lambda: f"{url} never answered 200\n{on_fail()}")
