"""`python -m agent_service dev`: embedded Redis + web + worker, prefixed logs, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent_service.cli.embedded import free_port
from tests.support.environment import ROOT, TEST_ENV
from tests.support.waiting import wait_http_ok, wait_until

pytestmark = pytest.mark.e2e  # python -m agent_service dev


def _children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    tree: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        tree.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for c in tree.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_dev_runs_everything_and_ctrl_c_leaves_no_orphan(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, **TEST_ENV, "PORT": str(port), "VAR_DIR": str(tmp_path / "var"),
           "DATABASE_PATH": str(tmp_path / "var" / "db.sqlite"), "QUEUE_NAME": "arq:dev-test"}
    env.pop("REDIS_URL", None)
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent_service", "dev"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/health/ready", timeout=30, on_fail=lambda: (tmp_path / "dev.log").read_text()[-3000:])
        key = next(ln.split("=", 1)[1] for ln in (tmp_path / "dev.log").read_text().splitlines()
                   if "export API_KEY=" in ln)
        headers = {"X-API-Key": key.strip()}
        task = httpx.post(f"{base}/api/v1/agents/echo/invoke-async", json={"message": "dev"}, headers=headers).json()

        def succeeded() -> bool:
            s = httpx.get(f"{base}/api/v1/agents/tasks/{task['task_id']}", headers=headers).json()
            return bool(s["state"] == "SUCCESS")

        wait_until(succeeded, timeout=10, interval=0.05)
        kids = _children(proc.pid)
        assert len(kids) >= 3  # valkey-server, web, worker
        assert (tmp_path / "var" / "redis" / "appendonlydir").exists()  # AOF on
        # the embedded valkey has a password, kept from other local users: files 0600, no command line
        var = tmp_path / "var"
        password = (var / "redis.password").read_text().strip()
        assert f":{password}@" in (var / "redis.url").read_text()
        for holder in (var / "redis.url", var / "redis.password"):
            assert stat.S_IMODE(holder.stat().st_mode) == 0o600, holder
        assert not [k for k in kids if password.encode() in Path(f"/proc/{k}/cmdline").read_bytes()]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        wait_until(lambda: not [k for k in kids if _alive(k)], timeout=5,
                   message=lambda: f"orphan processes left behind: {[k for k in kids if _alive(k)]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "dev.log").read_text()
    for prefix in ("redis  | ", "web    | ", "worker | ", "dev    | "):
        assert prefix in out
    assert f"{base}/docs" in out
    assert password not in out
