"""The service as child processes: uvicorn and arq workers started with `python -m`, their output
captured to files, and users written straight to the SQLite file they share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from agent_service.cli import bootstrap
from agent_service.config import load_settings
from tests.support.environment import ROOT

E2E_EMAIL, E2E_PASSWORD = "e2e@example.com", "e2e password!"  # bootstrap_user's defaults


class Process:
    """A child process (uvicorn or worker) with its output captured to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._fh, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


def service_argv(kind: str, env: dict[str, str]) -> list[str]:
    """The command line of a web process (on 127.0.0.1:$PORT, started as the Procfile starts it, so
    with the server options of kit/http_guard.py) or of a worker."""
    if kind == "web":
        return [sys.executable, "-m", "agent_service", "web", "--host", "127.0.0.1", "--port", env["PORT"]]
    return [sys.executable, "-m", "agent_service", "worker"]


class Live:
    """A running service: its base URL, its web and worker processes, and an ordinary user's API key."""

    def __init__(self, base: str, web: Process, worker: Process, api_key: str) -> None:
        self.base, self.web, self.worker = base, web, worker
        self.headers = {"X-API-Key": api_key}


def bootstrap_user(env: dict[str, str], email: str = E2E_EMAIL, *, admin: bool = False) -> str:
    """A user and API key written straight to the service's SQLite file (no HTTP needed)."""
    settings = load_settings(env, env_file=None)
    asyncio.run(bootstrap.create_user(settings, email=email, password=E2E_PASSWORD, admin=admin))
    return asyncio.run(bootstrap.create_api_key(settings, email=email, name="e2e"))
