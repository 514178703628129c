"""A minimal Chrome DevTools Protocol driver: headless Chromium over one WebSocket (`websockets`).

    async with Browser.launch() as page:
        await page.navigate("http://127.0.0.1:8000/dashboard")
        await page.wait_for("document.title !== ''")
        title = await page.evaluate("document.title")
        await page.screenshot(path)

Console errors and uncaught exceptions of the page are collected in `page.errors`. The browser runs
in its own process group with a throwaway profile; leaving the context kills the whole group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser binary: $CHROMIUM if set, else Debian's `chromium` (or a Chrome) on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class CDPError(RuntimeError):
    pass


class JSError(RuntimeError):
    """An exception thrown by the page's JavaScript during `evaluate`."""


class Page:
    """One page target: commands, events and the helpers the tests use."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self.errors: list[str] = []      # console.error/assert, uncaught exceptions, error log entries
        self.console: list[str] = []     # every console message, "type: text"
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                msg = json.loads(raw)
                if "id" in msg:
                    fut = self._pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                else:
                    self._on_event(msg["method"], msg.get("params", {}))
        except Exception as exc:  # connection closed: fail whoever still waits
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(CDPError(f"DevTools connection lost: {exc!r}"))
            self._pending.clear()

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(a) for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.errors.append(f"uncaught: {exc.get('description') or details.get('text')}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log[{entry.get('source')}]: {entry.get('text')} {entry.get('url', '')}".strip())
        for name, fut in list(self._waiters):
            if name == method and not fut.done():
                fut.set_result(params)
                self._waiters.remove((name, fut))

    async def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg_id, None)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip())
        result: dict[str, Any] = reply.get("result", {})
        return result

    def _event(self, method: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, fut))
        return fut

    async def enable(self, width: int = 1280, height: int = 900) -> None:
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)

    async def navigate(self, url: str, timeout: float = 15.0) -> None:
        loaded = self._event("Page.loadEventFired")
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigate {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, js: str, timeout: float = 15.0) -> Any:
        """Value of the expression (promises awaited, returned by value as JSON)."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=js, awaitPromise=True,
                                 returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise JSError(details.get("exception", {}).get("description") or details.get("text"))
        return result.get("result", {}).get("value")

    async def wait_for(self, predicate_js: str, timeout: float = 10.0, interval: float = 0.05) -> Any:
        """Poll until the expression is truthy and return its value; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = await self.evaluate(predicate_js)
            if last:
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true within {timeout}s: {predicate_js} (last value {last!r}); "
                                   f"page errors: {self.errors}")
            await asyncio.sleep(interval)

    async def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            metrics = await self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = await self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await self._ws.close()


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type"))


class Browser:
    """Headless Chromium in its own process group, with a throwaway profile directory."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.profile = Path(tempfile.mkdtemp(prefix="cdp-profile-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.log = self.profile.parent / f"{self.profile.name}.log"

    def start(self, timeout: float = 20.0) -> int:
        argv = [
            self.binary, "--headless=new", "--no-sandbox", "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-dev-shm-usage", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--metrics-recording-only", "--mute-audio",
            "--password-store=basic", "--use-mock-keychain", "about:blank",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            if port_file.exists():
                lines = port_file.read_text().splitlines()
                if lines and lines[0].strip().isdigit():
                    self.port = int(lines[0])
                    return self.port
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise CDPError(f"chromium did not open its DevTools port within {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    async def page_ws_url(self, timeout: float = 10.0) -> str:
        base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                targets = (await http.get(f"{base}/json/list")).json()
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
                if time.monotonic() > deadline:
                    created = (await http.put(f"{base}/json/new?about:blank")).json()
                    return str(created["webSocketDebuggerUrl"])
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """Kill the whole process group (browser, zygote, renderers, GPU) and drop the profile."""
        proc = self.proc
        if proc is not None:
            pgid = proc.pid  # start_new_session: the browser leads its own group
            # SIGTERM to the browser first: it stops and reaps its own children (no zombies left to init)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)  # whatever outlived it (or the browser itself, if it hung)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.log.unlink()

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, binary: str | None = None, *, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
        found = binary or find_chromium()
        if found is None:
            raise CDPError("no chromium binary (install Debian's `chromium`, or set CHROMIUM)")
        browser = cls(found)
        page: Page | None = None
        try:
            browser.start()
            ws = await connect(await browser.page_ws_url(), max_size=64 * 1024 * 1024, ping_interval=None)
            page = Page(ws)
            await page.enable(width=width, height=height)
            yield page
        finally:
            if page is not None:
                with contextlib.suppress(Exception):
                    await page.send("Browser.close", timeout=5)  # a clean exit first; kill() is the backstop
                await page.close()
            browser.kill()


def require_chromium() -> str:
    """The browser binary for a browser test: skip without one, unless CI=true, where that fails."""
    import pytest  # here: the driver itself does not need pytest

    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium binary: run scripts/install-chromium (as root)")
        pytest.skip("no chromium binary on PATH: run scripts/install-chromium (as root) for the browser tests")
    return binary
