"""scripts/enqueue.py: queue by hand, live progress bar, exit code reflects the outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.environment import ROOT
from tests.support.processes import bootstrap_user
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e  # worker child processes, scripts/enqueue.py, arq --check


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/enqueue.py", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_enqueue_and_wait(env: dict[str, str], spawn: Callable[..., Any]) -> None:
    bootstrap_user(env, email="admin@localhost", admin=True)
    spawn("worker", env)
    ok = run(env, "--agent", "echo", "--message", "by hand " * 20, "--stream", "--metadata", '{"delay": 0.01}',
             "--wait")
    assert ok.returncode == 0, ok.stderr
    task_id, _, rest = ok.stdout.partition("\n")
    final = json.loads(rest)
    assert final["task_id"] == task_id.strip() and final["state"] == "SUCCESS"
    assert final["result"]["content"] == "by hand " * 20
    assert "100% SUCCESS" in ok.stderr
    bad = run(env, "--message", "x", "--metadata", '{"fail": "permanent"}', "--wait")
    assert bad.returncode == 1 and json.loads(bad.stdout.partition("\n")[2])["state"] == "FAILURE"
    no_wait = run(env, "--message", "fire and forget")
    assert no_wait.returncode == 0 and len(no_wait.stdout.strip()) == 32
    unknown = run(env, "--agent", "ghost", "--message", "x")
    assert unknown.returncode == 2 and "ghost" in unknown.stderr
    maint = run(env, "--job", "cleanup_expired_sessions", "--wait")
    assert maint.returncode == 0, maint.stderr
    result = json.loads(maint.stdout.partition("\n")[2])["result"]
    assert result["deleted_count"] == 0 and result["status"] == "success"


def test_arq_check_reports_worker_health(env: dict[str, str], spawn: Callable[..., Any]) -> None:
    def check() -> int:
        return subprocess.run([sys.executable, "-m", "arq", "--check", "agent_service.worker.WorkerSettings"],
                              cwd=ROOT, env={**os.environ, **env}, capture_output=True, timeout=30).returncode

    assert check() == 1  # no worker yet
    spawn("worker", env)
    wait_until(lambda: check() == 0, timeout=15, interval=0.3, message=lambda: "arq --check never saw the worker")
