import asyncio
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_service.kit.db_sqlite import SqliteDatabase
from agent_service.kit.migrations import available, migrate
from agent_service.tasks import repository as tasks
from tests.support.databases import TestDatabase

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_migrations_apply_once(test_database: TestDatabase) -> None:
    db = await test_database.open(migrated=False)
    first = await migrate(db)
    assert first == [name for _, name, _ in available(db.dialect)]
    assert await migrate(db) == []
    rows = await db.fetchall("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r[0], r[1]) for r in rows] == [(v, name) for v, name, _ in available(db.dialect)]
    if db.dialect == "sqlite":
        row = await db.fetchone("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
    await db.close()


def _migrate_in_process(path: str) -> None:
    async def go() -> None:
        db = await SqliteDatabase.open(path)
        await migrate(db)
        await db.close()

    asyncio.run(go())


@pytest.mark.sqlite_only  # SQLite's BEGIN IMMEDIATE; PostgreSQL's advisory lock: test_postgres.py
def test_concurrent_migration_from_several_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate_in_process, args=(path,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    async def check() -> int:
        db = await SqliteDatabase.open(path)
        row = await db.fetchone("SELECT COUNT(*) FROM schema_migrations")
        await db.close()
        assert row is not None
        return int(row[0])

    assert asyncio.run(check()) == len(available())


async def test_task_lifecycle_and_finished_tasks_stay_finished(test_database: TestDatabase) -> None:
    db = await test_database.open()
    await tasks.create(db, task_id="t1", kind="invoke", agent_id="echo", owner_id="u1", request_id="r",
                       session_id=None, now=T0)
    rec = await tasks.get(db, "t1")
    assert rec is not None and rec.state == "PENDING" and rec.tries == 0
    assert await tasks.mark_started(db, "t1", tries=1, now=T0 + timedelta(seconds=1))
    await tasks.mark_retry(db, "t1", error="boom", retry_at=T0 + timedelta(seconds=5), now=T0)
    rec = await tasks.get(db, "t1")
    assert rec is not None and rec.state == "RETRY" and rec.next_retry_at == T0 + timedelta(seconds=5)
    assert await tasks.mark_started(db, "t1", tries=2, now=T0 + timedelta(seconds=6))
    assert await tasks.mark_finished(db, "t1", state="SUCCESS", error=None, now=T0 + timedelta(seconds=7))
    # a re-delivered job must not reopen or overwrite a finished task
    assert not await tasks.mark_started(db, "t1", tries=3, now=T0)
    assert not await tasks.mark_finished(db, "t1", state="FAILURE", error="late", now=T0)
    rec = await tasks.get(db, "t1")
    assert rec is not None and (rec.state, rec.tries, rec.error) == ("SUCCESS", 2, None)
    assert rec.started_at == T0 + timedelta(seconds=1)
    await db.close()
