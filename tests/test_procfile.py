"""The repository's Procfile run by honcho (the .venv's, as the README shows), against a real valkey
and PostgreSQL: `release` migrates (and says so once), `web` answers on $PORT, `worker` runs the
jobs, and stopping honcho with SIGTERM leaves no process of ours behind."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent_service.cli.embedded import EmbeddedRedis, free_port
from agent_service.cli.embedded_postgres import EmbeddedPostgres
from tests.support.environment import ROOT, TEST_ENV
from tests.support.stack import (
    HTTP_TIMEOUT,
    clean_environ,
    key_prefix,
    postgres_server,
    submit,
    wait_ready,
    wait_state,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HONCHO = str(ROOT / ".venv" / "bin" / "honcho")
PROCFILE = ROOT / "Procfile"
ADMIN_EMAIL, ADMIN_PASSWORD = "boss@example.com", "boss password!"


def procfile() -> dict[str, str]:
    lines = (ln.partition(":") for ln in PROCFILE.read_text().splitlines() if ln.strip() and not ln.startswith("#"))
    return {name.strip(): cmd.strip() for name, _, cmd in lines}


@pytest.fixture(scope="module")
def postgres() -> Iterator[EmbeddedPostgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def app_env(tmp_path: Path, redis_server: EmbeddedRedis, postgres: EmbeddedPostgres) -> dict[str, str]:
    """What a PaaS would set for every process (plus the test's speed-ups), a fresh database each."""
    var = tmp_path / "var"
    return {
        **clean_environ(), **TEST_ENV,
        "PORT": str(free_port()),
        "REDIS_URL": redis_server.url,
        "DATABASE_URL": postgres.create_database(),
        "REDIS_KEY_PREFIX": key_prefix(),  # also how this test's processes are found in /proc
        "BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
        "BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # nothing is written into the repository the Procfile's commands `cd` to
        "VAR_DIR": str(var),
        "TEMP_DIR": str(var / "tmp"),
        "AUDIT_ARCHIVE_DIR": str(var / "audit-archive"),
        "DATABASE_PATH": str(var / "must-not-exist.db"),
        "WORKER_DRAIN_SECONDS": "3",
    }


def honcho_run(env: dict[str, str], *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HONCHO, "-f", str(PROCFILE), "-d", str(ROOT), "run", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


class Honcho:
    """`honcho start [PROCESS…]` on the repository's Procfile, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path, *processes: str) -> None:
        self.env, self.log = env, log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen([HONCHO, "-f", str(PROCFILE), "-d", str(ROOT), "--no-colour", "start",
                                      *processes], cwd=ROOT, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


def ours(prefix: str) -> list[tuple[int, str]]:
    """Live processes (not zombies) whose environment holds this test's REDIS_KEY_PREFIX: honcho's
    children and everything they started, wherever they were re-parented."""
    marker = f"REDIS_KEY_PREFIX={prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "Z":
                continue
            found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:
            continue
    return found


@pytest.fixture
def started(app_env: dict[str, str], tmp_path: Path) -> Iterator[list[Honcho]]:
    """Every honcho a test starts is stopped afterwards, and nothing of it may outlive it."""
    running: list[Honcho] = []
    yield running
    for h in running:
        h.stop()
    prefix = app_env["REDIS_KEY_PREFIX"]
    try:
        wait_until(lambda: not ours(prefix), timeout=5, interval=0.05)
    except AssertionError:
        pass
    leftovers = ours(prefix)
    for pid, _ in leftovers:  # clean up before failing (these pids are ours: they carry our prefix)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left behind after honcho stopped: {leftovers}"


@pytest.mark.timeout(120)
def test_release_applies_the_migrations_then_has_nothing_to_apply(app_env: dict[str, str]) -> None:
    release = shlex.split(procfile()["release"])
    assert release[:2] == ["./scripts/run", "migrate"], release

    first = honcho_run(app_env, *release)
    assert first.returncode == 0, first.stdout + first.stderr
    applied = next(ln for ln in first.stdout.splitlines() if ln.startswith("applied: "))
    assert applied != "applied: nothing (up to date)" and "0001" in applied, first.stdout
    assert "created the bootstrap admin" in first.stdout, first.stdout

    second = honcho_run(app_env, *release)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "applied: nothing (up to date)" in second.stdout.splitlines(), second.stdout
    assert "created the bootstrap admin" not in second.stdout, second.stdout
    # the password is never printed or logged
    for out in (first, second):
        assert ADMIN_PASSWORD not in out.stdout + out.stderr
    assert not Path(app_env["DATABASE_PATH"]).exists()  # PostgreSQL, not a SQLite file


@pytest.mark.timeout(120)
def test_honcho_start_web_and_worker_serve_a_task_end_to_end(app_env: dict[str, str], tmp_path: Path,
                                                             started: list[Honcho]) -> None:
    release = honcho_run(app_env, *shlex.split(procfile()["release"]))
    assert release.returncode == 0, release.stdout + release.stderr

    h = Honcho(app_env, tmp_path / "honcho.log", "web", "worker")
    started.append(h)
    wait_ready(h.base, timeout=40, on_fail=h.output)
    assert f"0.0.0.0:{app_env['PORT']}" in h.output()  # the Procfile's --port ${PORT}

    minted = honcho_run(app_env, "./scripts/run", "create-api-key", "--email", ADMIN_EMAIL)
    assert minted.returncode == 0, minted.stdout + minted.stderr
    headers = {"X-API-Key": minted.stdout.strip().splitlines()[-1]}
    me = httpx.get(f"{h.base}/api/v1/auth/me", headers=headers, timeout=HTTP_TIMEOUT)
    assert me.status_code == 200 and me.json()["email"] == ADMIN_EMAIL, me.text
    assert "admin" in me.json()["roles"]

    for body in ({"message": "through the Procfile"}, {"message": "streamed through it", "stream": True}):
        done = wait_state(h.base, headers, submit(h.base, headers, body), timeout=30)
        assert done["state"] == "SUCCESS" and done["result"]["content"] == body["message"], done
    token = httpx.post(f"{h.base}/api/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                       timeout=HTTP_TIMEOUT)
    assert token.status_code == 200, token.text

    assert ours(app_env["REDIS_KEY_PREFIX"]), "the processes are not found by their environment"
    code = h.stop()
    assert code != -signal.SIGKILL, h.output()[-3000:]
    out = h.output()
    assert "SIGTERM received" in out, out[-3000:]
    assert "Application shutdown complete." in out and "worker.draining" in out, out[-3000:]
    # not one child outlives honcho (honcho waits for each one's output to close: allow it the
    # moment between a child closing its stdout and its exit)
    wait_until(lambda: not ours(app_env["REDIS_KEY_PREFIX"]), timeout=2, interval=0.05,
               message=lambda: f"left behind: {ours(app_env['REDIS_KEY_PREFIX'])}")
    assert "Traceback" not in out and ADMIN_PASSWORD not in out, out[-3000:]
    assert not Path(app_env["DATABASE_PATH"]).exists()
