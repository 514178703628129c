"""scripts/enqueue.py: queue by hand, live progress bar, exit code reflects the outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.conftest import ROOT, bootstrap_user


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
