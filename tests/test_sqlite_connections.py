"""kit/db_sqlite.py's two connections: statements on the loop's thread, the waiting one when the
file is locked by someone else, slow statements moved off the loop, checkpoints kept up."""

from __future__ import annotations

import asyncio
import sqlite3
import struct
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent_service.errors import ConfigError
from agent_service.kit import db_sqlite
from agent_service.kit.db import DatabaseUnavailable
from agent_service.kit.db_sqlite import SqliteDatabase

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    opened = await SqliteDatabase.open(str(tmp_path / "two.db"), busy_timeout_ms=5000)
    await opened.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield opened
    await opened.close()


def holder(path: Path) -> sqlite3.Connection:
    """Another connection to the file, as another process's would be."""
    return sqlite3.connect(path, isolation_level=None, timeout=5)


async def test_a_write_waits_out_another_writer_without_holding_up_the_loop(db: SqliteDatabase,
                                                                           tmp_path: Path) -> None:
    other = holder(tmp_path / "two.db")
    other.execute("BEGIN IMMEDIATE")
    write = asyncio.create_task(db.execute("INSERT INTO t (v) VALUES ('after the lock')"))
    ticks = 0
    for _ in range(20):  # the loop keeps running other work while the write waits for the file
        await asyncio.sleep(0.01)
        ticks += 1
    assert not write.done()
    other.execute("ROLLBACK")
    assert await asyncio.wait_for(write, 10) == 1
    assert ticks == 20
    row = await db.fetchone("SELECT v FROM t")
    assert row is not None and row[0] == "after the lock"
    other.close()


async def test_a_transaction_waits_out_another_writer_and_commits_whole(db: SqliteDatabase, tmp_path: Path) -> None:
    other = holder(tmp_path / "two.db")
    other.execute("BEGIN IMMEDIATE")

    async def both() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES ('one')")
            await tx.execute("INSERT INTO t (v) VALUES ('two')")

    work = asyncio.create_task(both())
    await asyncio.sleep(0.05)
    assert not work.done()
    other.execute("ROLLBACK")
    await asyncio.wait_for(work, 10)
    rows = await db.fetchall("SELECT v FROM t ORDER BY id")
    assert [r[0] for r in rows] == ["one", "two"]
    other.close()


async def test_locked_past_busy_timeout_is_unavailable_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "short.db"
    db = await SqliteDatabase.open(str(path), busy_timeout_ms=100)
    await db.execute("CREATE TABLE t (v TEXT)")
    other = holder(path)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseUnavailable):
        await db.execute("INSERT INTO t VALUES ('x')")
    with pytest.raises(DatabaseUnavailable):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES ('y')")
    assert (await db.fetchone("SELECT COUNT(*) FROM t"))[0] == 0  # type: ignore[index]  # WAL: reads go on
    other.execute("ROLLBACK")
    assert await db.execute("INSERT INTO t VALUES ('z')") == 1
    other.close()
    await db.close()


async def test_a_failed_transaction_is_rolled_back_on_its_connection(db: SqliteDatabase) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES ('gone')")
            raise RuntimeError("the body failed")
    assert await db.fetchall("SELECT v FROM t") == []
    async with db.transaction() as tx:  # nothing left open: the next one begins
        await tx.execute("INSERT INTO t (v) VALUES ('kept')")
    assert [r[0] for r in await db.fetchall("SELECT v FROM t")] == ["kept"]


async def test_concurrent_statements_and_transactions_never_interleave(db: SqliteDatabase) -> None:
    async def pair(i: int) -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t (v) VALUES (?)", (f"a{i}",))
            await asyncio.sleep(0)  # a body that yields: another coroutine's statements must wait
            await tx.execute("INSERT INTO t (v) VALUES (?)", (f"b{i}",))

    async def single(i: int) -> None:
        await db.execute("INSERT INTO t (v) VALUES (?)", (f"s{i}",))

    await asyncio.gather(*(pair(i) for i in range(20)), *(single(i) for i in range(20)))
    values = [r[0] for r in await db.fetchall("SELECT v FROM t ORDER BY id")]
    assert len(values) == 60
    for i in range(20):
        assert values.index(f"b{i}") == values.index(f"a{i}") + 1


async def test_a_slow_statement_runs_off_the_loop_from_then_on(db: SqliteDatabase) -> None:
    slow = ("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 400000)"
            " SELECT COUNT(*) FROM n")
    for _ in range(db_sqlite.SLOW_STRIKES - 1):  # one slow run may be a GC pass: not yet
        assert (await db.fetchone(slow))[0] == 400000  # type: ignore[index]
    assert slow not in db._slow
    assert (await db.fetchone(slow))[0] == 400000  # type: ignore[index]
    assert slow in db._slow
    assert (await db.fetchone(slow))[0] == 400000  # type: ignore[index]  # the thread's answer is the same
    assert "SELECT 1" not in db._slow


async def test_writes_on_the_loop_are_checkpointed(db: SqliteDatabase, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_sqlite, "CHECKPOINT_ROWS", 50)
    for burst in range(4):
        for i in range(60):  # each burst passes CHECKPOINT_ROWS once: a checkpoint starts
            await db.execute("INSERT INTO t (v) VALUES (?)", (f"{burst}-{i}",))
        for _ in range(500):  # it runs on a thread of its own, while the loop goes on
            if db._checkpoint is None:
                break
            await asyncio.sleep(0.01)
        assert db._checkpoint is None
    other = holder(tmp_path / "two.db")
    busy, frames, checkpointed = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    other.close()
    # without the checkpoints (the loop's connection never makes one) all 240 commits would be in
    # the WAL; with them, each burst's first write found the log copied and started it afresh
    assert busy == 0 and frames < 150, (frames, checkpointed)


async def test_an_in_memory_database_is_refused() -> None:
    with pytest.raises(ConfigError):
        await SqliteDatabase.open(":memory:")



def log_frames(path: Path) -> int:
    """mxFrame of the WAL index header (its bytes 16-20, native order): how long the log is,
    read without checkpointing, which would let the log restart and hide what is measured."""
    with open(f"{path}-shm", "rb") as shm:
        return int(struct.unpack_from("=I", shm.read(24), 16)[0])



async def test_a_checkpoint_left_behind_by_new_writes_restarts_the_log(db: SqliteDatabase, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_sqlite, "RESTART_FRAMES", 50)
    path = tmp_path / "two.db"
    for i in range(100):
        await db.execute("INSERT INTO t (v) VALUES (?)", (f"before {i}",))
    # a reader's snapshot stands for the writes that land while a checkpoint runs under steady
    # load: the passive checkpoint copies the log only up to it, so it ends behind the log's end
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    for i in range(100):
        await db.execute("INSERT INTO t (v) VALUES (?)", (f"after {i}",))
    issued: list[str] = []
    real_connect = sqlite3.connect

    def on_statement(sql: str) -> None:
        issued.append(sql)
        if "RESTART" in sql:  # the reader finishes while the RESTART waits for it
            reader.rollback()

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(on_statement)
        return conn

    monkeypatch.setattr(db_sqlite.sqlite3, "connect", traced)
    try:
        await asyncio.to_thread(db_sqlite._checkpoint, str(path))
    finally:
        monkeypatch.setattr(db_sqlite.sqlite3, "connect", real_connect)
        if reader.in_transaction:
            reader.rollback()
        reader.close()
    assert any("RESTART" in sql for sql in issued), issued
    await db.execute("INSERT INTO t (v) VALUES ('next')")
    # without the RESTART, the next write appends to the 200 frames: a log under steady writes only grows
    assert log_frames(path) < 10, log_frames(path)
    assert (await db.fetchone("SELECT count(*) FROM t"))[0] == 201  # type: ignore[index]


async def test_a_restart_that_finds_a_reader_still_reading_gives_up_and_says_so(
        db: SqliteDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_sqlite, "RESTART_FRAMES", 50)
    path = tmp_path / "two.db"
    for i in range(100):
        await db.execute("INSERT INTO t (v) VALUES (?)", (f"before {i}",))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()
    for i in range(100):
        await db.execute("INSERT INTO t (v) VALUES (?)", (f"after {i}",))
    try:
        with capture_logs() as logs:
            await asyncio.to_thread(db_sqlite._checkpoint, str(path), 20)
    finally:
        reader.rollback()
        reader.close()
    assert [entry for entry in logs if entry["event"] == "db.wal_restart_deferred"], logs
    await db.execute("INSERT INTO t (v) VALUES ('writes go on')")
    assert (await db.fetchone("SELECT count(*) FROM t"))[0] == 201  # type: ignore[index]


async def test_a_restart_waits_at_most_half_the_busy_timeout(tmp_path: Path) -> None:
    short = await SqliteDatabase.open(str(tmp_path / "short.db"), busy_timeout_ms=60)
    try:
        assert short._restart_wait_ms == 30  # writers held off by it still get their turn
    finally:
        await short.close()


async def test_the_loop_connections_setup_waits_out_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    first = await SqliteDatabase.open(str(path))
    await first.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    await first.close()
    # another connection has the file to itself for a moment (as one closing last, or recovering
    # a crashed writer's WAL, does); setting up the loop's connection reads the schema meanwhile
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t DEFAULT VALUES")
    holder.execute("COMMIT")
    release = threading.Timer(0.3, holder.close)
    release.start()
    try:
        conn = await asyncio.to_thread(db_sqlite._loop_connection, str(path), 5000)
    finally:
        release.join(10)
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # and never waits from then on
    finally:
        conn.close()
