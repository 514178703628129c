"""archive_old_audit_logs: files per day, content equals rows, and crash safety (hook and SIGKILL)."""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from agent_service.audit import repository as audit_store
from agent_service.audit.archive import archive_old_audit_logs, read_archive
from agent_service.audit.archive_files import derive_key
from agent_service.audit.schemas import AuditEntry, AuditRecord
from agent_service.kit.db import Database
from tests.support.databases import TestDatabase
from tests.support.environment import ROOT

NOW = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=90)  # 2026-03-03T02:00Z
SECRET = "archive-tests-secret-0123456789abcdef"
KEY = derive_key(SECRET)


class SimulatedCrash(Exception):
    pass


@pytest.fixture
async def db(test_database: TestDatabase) -> AsyncIterator[Database]:
    database = await test_database.open()
    yield database
    await database.close()


def at(day: int, hour: int = 12, month: int = 2) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


async def insert(db: Database, stamps: list[datetime]) -> None:
    await audit_store.insert_many(db, [
        AuditEntry(action="EXECUTE", resource_type="agent", actor=f"user:{i % 3}", resource_id="echo",
                   metadata={"i": i, "nested": {"ok": True}}, timestamp=t)
        for i, t in enumerate(stamps)
    ], now=NOW)


async def old_rows(db: Database, cutoff: datetime = CUTOFF) -> list[AuditRecord]:
    return await audit_store.oldest_before(db, cutoff, 1_000_000)


async def remaining_ids(db: Database) -> list[int]:
    return [r[0] for r in await db.fetchall("SELECT id FROM audit_logs ORDER BY id")]


def archived(archive_dir: Path) -> list[AuditRecord]:
    return [r for p in sorted(archive_dir.glob("audit-*.jsonl.gz")) for r in read_archive(p)]


def assert_each_archived_once(archive_dir: Path, expected: list[AuditRecord]) -> None:
    records = archived(archive_dir)
    counts = Counter(r.id for r in records)
    assert [i for i, c in counts.items() if c > 1] == [], "archived twice"
    assert sorted(counts) == sorted(r.id for r in expected), "lost or extra rows"
    by_id = {r.id: r for r in records}
    assert all(by_id[r.id] == r for r in expected), "archived content differs from the row"


async def test_old_rows_go_to_one_gzip_jsonl_file_per_day_then_leave_the_table(db: Database, tmp_path: Path) -> None:
    # inserted out of time order so ids and timestamps disagree, as with several buffered writers
    await insert(db, [at(28), at(27, 1), at(27, 23), at(28, 0), at(1, 5, month=3), at(3, 1, month=3),
                      at(3, 3, month=3), NOW, at(27, 12)])
    expected = await old_rows(db)
    assert len(expected) == 7
    archive_dir = tmp_path / "archive"
    result = await archive_old_audit_logs(db, key=KEY, archive_dir=archive_dir, retention_days=90, now=NOW,
                                          clock=lambda: NOW + timedelta(seconds=3))

    assert result["files_written"] == [
        "audit-2026-02-27-000000000002-000000000009.jsonl.gz",
        "audit-2026-02-28-000000000001-000000000004.jsonl.gz",
        "audit-2026-03-01-000000000005-000000000005.jsonl.gz",
        "audit-2026-03-03-000000000006-000000000006.jsonl.gz",  # 01:00 is before the 02:00 cutoff
    ]
    assert sorted(p.name for p in archive_dir.glob("audit-*")) == result["files_written"]
    assert (result["archived_count"], result["deleted_count"], result["status"]) == (7, 7, "success")
    assert result["bytes_written"] == sum((archive_dir / n).stat().st_size for n in result["files_written"])
    assert (result["cutoff_time"], result["started_at"], result["completed_at"]) == (
        "2026-03-03T02:00:00.000000+00:00", "2026-06-01T02:00:00.000000+00:00", "2026-06-01T02:00:03.000000+00:00")
    assert await remaining_ids(db) == [7, 8]

    # each line is one row as JSON, in (timestamp, id) order within its day
    with gzip.open(archive_dir / result["files_written"][0], "rt", encoding="utf-8") as fh:
        lines = [msgspec.json.decode(line) for line in fh]
    assert lines == [msgspec.to_builtins(r) for r in expected[:3]]
    assert [line["id"] for line in lines] == [2, 9, 3]
    assert_each_archived_once(archive_dir, expected)
    assert not list(archive_dir.glob("*.tmp"))

    again = await archive_old_audit_logs(db, key=KEY, archive_dir=archive_dir, retention_days=90, now=NOW)
    assert (again["archived_count"], again["deleted_count"], again["files_written"]) == (0, 0, [])


async def test_large_days_are_archived_in_batches(db: Database, tmp_path: Path) -> None:
    await insert(db, [at(10) + timedelta(seconds=i) for i in range(10)] + [at(11)])
    expected = await old_rows(db)
    result = await archive_old_audit_logs(db, key=KEY, archive_dir=tmp_path, retention_days=90, now=NOW, batch_size=3)
    assert [n[6:16] for n in result["files_written"]] == ["2026-02-10"] * 3 + ["2026-02-10", "2026-02-11"]
    assert result["archived_count"] == 11
    assert await remaining_ids(db) == []
    assert_each_archived_once(tmp_path, expected)


@pytest.mark.parametrize("rerun_later", [timedelta(0), timedelta(days=1)], ids=["same-now", "next-day"])
async def test_crash_between_write_and_delete_then_rerun_archives_each_row_once(
    db: Database, tmp_path: Path, rerun_later: timedelta
) -> None:
    # day 3 March straddles the cutoff: a rerun a day later sees more of it in the same batch
    await insert(db, [at(1), at(1, 13), at(2), at(2, 13), at(3, 1, month=3), at(3, 12, month=3), at(20, month=3)])
    written: list[Path] = []

    async def crash_on_third(path: Path) -> None:
        written.append(path)
        if len(written) == 3:
            raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        await archive_old_audit_logs(db, key=KEY, archive_dir=tmp_path, retention_days=90, now=NOW, batch_size=10,
                                     after_write=crash_on_third)
    # the third file is durable, and its rows are still in the table
    assert written[2].exists() and [r.id for r in read_archive(written[2])] == [5]
    assert 5 in await remaining_ids(db)

    later = NOW + rerun_later
    expected_new = [r for r in await old_rows(db, later - timedelta(days=90)) if r.id != 5]
    result = await archive_old_audit_logs(db, key=KEY, archive_dir=tmp_path, retention_days=90, now=later)
    assert result["deleted_count"] == result["archived_count"] + 1  # the recovered row is deleted, not rewritten
    assert sorted(r.id for r in archived(tmp_path)) == sorted([1, 2, 3, 4, 5] + [r.id for r in expected_new])
    assert_each_archived_once(tmp_path, [r for r in archived(tmp_path)])
    assert await remaining_ids(db) == ([6, 7] if rerun_later == timedelta(0) else [7])


async def test_torn_temp_files_are_removed_and_corrupt_files_set_aside(db: Database, tmp_path: Path) -> None:
    await insert(db, [at(1), at(2)])
    expected = await old_rows(db)

    async def crash(path: Path) -> None:
        raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        await archive_old_audit_logs(db, key=KEY, archive_dir=tmp_path, retention_days=90, now=NOW, after_write=crash)
    first = next(tmp_path.glob("audit-*.jsonl.gz"))
    first.write_bytes(first.read_bytes()[:-8])  # lose the gzip trailer: unreadable as a whole
    (tmp_path / f".{first.name}.dead.tmp").write_bytes(b"half a file")

    result = await archive_old_audit_logs(db, key=KEY, archive_dir=tmp_path, retention_days=90, now=NOW)
    assert result["archived_count"] == 2
    assert (tmp_path / (first.name + ".corrupt")).exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert_each_archived_once(tmp_path, expected)
    assert await remaining_ids(db) == []


async def test_a_second_concurrent_run_is_skipped(db: Database, tmp_path: Path) -> None:
    await insert(db, [at(1)])
    with (tmp_path / ".archive.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        result = await archive_old_audit_logs(db, key=KEY, archive_dir=tmp_path, retention_days=90, now=NOW)
    assert (result["status"], result["archived_count"]) == ("skipped", 0)
    assert await remaining_ids(db) == [1]


CHILD = """
import asyncio, sys
from datetime import datetime
from pathlib import Path
from agent_service.audit.archive import archive_old_audit_logs
from agent_service.audit.archive_files import derive_key
from tests.support.databases import open_target

async def main():
    db = await open_target(sys.argv[1])  # a SQLite file's path or a PostgreSQL URL
    async def progress(path):
        print(path.name, flush=True)
    await archive_old_audit_logs(db, key=derive_key(sys.argv[4]), archive_dir=Path(sys.argv[2]), retention_days=90,
                                 now=datetime.fromisoformat(sys.argv[3]), batch_size=7, after_write=progress)
    print("DONE", flush=True)

asyncio.run(main())
"""


def _run_and_kill(target: str, archive_dir: Path, after_files: int) -> None:
    """Run the archive in a child process and SIGKILL it after `after_files` files are durable."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, target, str(archive_dir), NOW.isoformat(), SECRET],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    try:
        for _ in range(after_files):
            line = proc.stdout.readline()
            assert line and line != b"DONE\n", "the child finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # wherever it is now: writing, renaming or deleting
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


async def test_sigkilled_runs_then_a_rerun_lose_nothing_and_archive_nothing_twice(
    test_database: TestDatabase, tmp_path: Path
) -> None:
    archive_dir = tmp_path / "archive"
    db = await test_database.open()
    await insert(db, [at(1) + timedelta(minutes=17 * i) for i in range(2000)] + [NOW])
    expected = await old_rows(db)
    assert len(expected) > 1500
    await db.close()

    for after_files in (5, 13, 29):
        await asyncio.to_thread(_run_and_kill, test_database.target, archive_dir, after_files)

    db = await test_database.open(migrated=False)
    try:
        await archive_old_audit_logs(db, key=KEY, archive_dir=archive_dir, retention_days=90, now=NOW, batch_size=7)
        assert_each_archived_once(archive_dir, expected)
        assert await remaining_ids(db) == [2001]
        assert not list(archive_dir.glob("*.tmp"))
    finally:
        await db.close()
