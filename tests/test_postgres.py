"""What only PostgreSQL has: many `migrate` processes racing on one database (the advisory lock),
DATABASE_URL's mistakes and an unreachable server reported in one line, text PostgreSQL cannot
store; and that the `backend` parametrization really puts the app on the backend it names."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from agent_service.cli.embedded import free_port
from agent_service.config import settings_fields
from agent_service.kit.migrations import ADVISORY_LOCK_KEY, available
from tests.support.apps import Client, add_user
from tests.support.databases import PostgresDatabases
from tests.support.environment import ROOT, TEST_ENV
from tests.support.waiting import wait_for

SETTING_NAMES = {name for name, _, _ in settings_fields()}
MIGRATORS = 10


def service_environ(**settings: str) -> dict[str, str]:
    """The runner's environment without any service setting of the developer's, plus `settings`."""
    base = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES and not k.startswith("PYTEST_")}
    return {**base, **TEST_ENV, **settings}


def migrate_argv() -> list[str]:
    return [sys.executable, "-m", "agent_service", "migrate"]


def assert_one_line_naming_database_url(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# --- migrations under the advisory lock --------------------------------------------------------


@pytest.mark.e2e  # `python -m agent_service migrate` child processes
def test_ten_migrate_commands_at_once_apply_each_migration_exactly_once(postgres: PostgresDatabases,
                                                                          tmp_path: Path) -> None:
    url = postgres.create()
    env = service_environ(DATABASE_URL=url, DATABASE_PATH=str(tmp_path / "must-not-exist.db"),
                          VAR_DIR=str(tmp_path / "var"))

    logs = [(tmp_path / f"migrate-{i}.out", tmp_path / f"migrate-{i}.err") for i in range(MIGRATORS)]

    async def race() -> list[subprocess.Popen[bytes]]:
        # hold the migrations' lock until all ten wait on it: then they really go at the same moment
        conn = await asyncpg.connect(url)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            await conn.execute(f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})")
            for out, err in logs:
                with out.open("wb") as o, err.open("wb") as e:
                    procs.append(subprocess.Popen(migrate_argv(), env=env, cwd=ROOT, stdout=o, stderr=e))

            async def all_waiting() -> bool:
                gone = [i for i, p in enumerate(procs) if p.poll() is not None]
                assert not gone, f"migrate exited before the lock was free: {logs[gone[0]][1].read_text()}"
                n = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                return bool(n == MIGRATORS)

            await wait_for(all_waiting, timeout=60, interval=0.05)
            await conn.execute(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})")
        except BaseException:
            for p in procs:
                p.kill()
            raise
        finally:
            await conn.close()
        return procs

    codes = [p.wait(60) for p in asyncio.run(race())]
    results = [(rc, out.read_text(), err.read_text()) for rc, (out, err) in zip(codes, logs, strict=True)]
    assert codes == [0] * MIGRATORS, [err[-1500:] for _, _, err in results]

    names = [name for _, name, _ in available("postgresql")]
    applied_lines = [line for _, out, _ in results for line in out.splitlines() if line.startswith("applied: ")]
    assert len(applied_lines) == MIGRATORS
    by_process = [line.removeprefix("applied: ") for line in applied_lines]
    assert sorted(by_process) == sorted([", ".join(names)] + ["nothing (up to date)"] * (MIGRATORS - 1))

    async def recorded() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(url)
        try:
            return [(r["version"], r["name"]) for r in
                    await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")]
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == [(v, name) for v, name, _ in available("postgresql")]
    assert not (tmp_path / "must-not-exist.db").exists()


# --- DATABASE_URL mistakes: one line, exit 2 ---------------------------------------------------


@pytest.mark.e2e  # `python -m agent_service migrate` child processes
@pytest.mark.parametrize("url", ["mysql://x", "postgresql://h:notaport/db", "postgresql://h/"],
                         ids=["not-postgresql", "bad-port", "no-database"])
def test_a_malformed_database_url_is_one_line_naming_it(url: str, tmp_path: Path) -> None:
    proc = subprocess.run(migrate_argv(), env=service_environ(DATABASE_URL=url, VAR_DIR=str(tmp_path / "var")),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_naming_database_url(proc)


@pytest.mark.e2e  # a `python -m agent_service migrate` child process
def test_an_unreachable_server_at_start_is_one_line_naming_database_url(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run(migrate_argv(), env=service_environ(DATABASE_URL=url, DB_START_TIMEOUT="1",
                                                              VAR_DIR=str(tmp_path / "var")),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert_one_line_naming_database_url(proc)
    assert re.search(r"127\.0\.0\.1:\d+", proc.stderr), proc.stderr  # says where it looked
    assert time.monotonic() - started < 20  # gave up after DB_START_TIMEOUT, not the 30 s default


# --- text PostgreSQL cannot store --------------------------------------------------------------


@pytest.mark.postgresql_only
async def test_text_with_a_nul_character_is_a_client_error_never_a_500(client: Client) -> None:
    """PostgreSQL's text cannot hold U+0000 (SQLite's can): such input must be refused, not crash."""
    admin = {"X-API-Key": await add_user(client.app, "root@example.com", admin=True)}
    statuses = {
        "POST /api/v1/users": (await client.post("/api/v1/users", headers=admin, json={
            "email": "nul\u0000@example.com", "password": "correct horse battery"})).status_code,
        "POST /api/v1/auth/token": (await client.post("/api/v1/auth/token", json={
            "email": "nul\u0000@example.com", "password": "correct horse battery"})).status_code,
        "GET /api/v1/agents/tasks/{id}": (await client.get("/api/v1/agents/tasks/a%00b")).status_code,
    }
    assert {k: v for k, v in statuses.items() if v >= 500} == {}
    assert statuses["POST /api/v1/users"] == 422


# --- the parametrization itself ----------------------------------------------------------------


async def test_the_backend_parameter_decides_where_the_app_keeps_its_data(client: Client, backend: str,
                                                                           env: dict[str, str]) -> None:
    assert client.app.state.deps.db.dialect == backend
    assert bool(env["DATABASE_URL"]) == (backend == "postgresql")
    assert Path(env["DATABASE_PATH"]).exists() == (backend == "sqlite")
