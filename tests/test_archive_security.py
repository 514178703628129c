"""Audit-archive recovery deletes rows only for a file this deployment wrote (its tag verifies) whose
rows are the table's rows; archives, their directory and the SQLite database are private (0600/0700)."""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from agent_service.audit import archive_files as files
from agent_service.audit import repository as audit_store
from agent_service.audit.archive import archive_old_audit_logs, file_name, read_archive
from agent_service.audit.jobs import ARCHIVE_OLD_AUDIT_LOGS
from agent_service.audit.schemas import AuditEntry, AuditRecord
from agent_service.config import Settings
from agent_service.identity.tokens import resolve_secret
from agent_service.kit.db import Database
from agent_service.kit.db_sqlite import SqliteDatabase
from tests.support.apps import app_client
from tests.support.databases import TestDatabase

NOW = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
KEY = files.derive_key("archive-security-tests-secret-0123456789")
OTHER_KEY = files.derive_key("someone-elses-secret-0123456789abcdef")


class SimulatedCrash(Exception):
    pass


@pytest.fixture
async def db(test_database: TestDatabase) -> AsyncIterator[Database]:
    database = await test_database.open()
    yield database
    await database.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def insert(db: Database, stamps: list[datetime]) -> list[AuditRecord]:
    await audit_store.insert_many(db, [
        AuditEntry(action="DELETE", resource_type="api_key", actor=f"user:{i}", resource_id=f"k{i}",
                   client_ip="203.0.113.7", metadata={"i": i}, timestamp=t)
        for i, t in enumerate(stamps)
    ], now=NOW)
    return await audit_store.oldest_before(db, NOW + timedelta(days=365), 1000)


async def ids_in_table(db: Database) -> list[int]:
    return [r[0] for r in await db.fetchall("SELECT id FROM audit_logs ORDER BY id")]


def name_for(records: list[AuditRecord]) -> str:
    ids = [r.id for r in records]
    return file_name(records[0].timestamp.astimezone(UTC).date().isoformat(), min(ids), max(ids))


def plant(directory: Path, name: str, content: bytes, key: bytes | None) -> Path:
    """A well-named file in the archive directory, tagged under `key` (None: untagged, as gzip writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if key is None:
        with gzip.GzipFile(filename=str(path), mode="wb", mtime=0) as gz:  # what the archive wrote before tags
            gz.write(content)
    else:
        path.write_bytes(files.gzip_bytes(name, content, files.tag_of(key, name, content)))
    return path


async def run(db: Database, archive_dir: Path, **kw: object) -> dict[str, object]:
    return await archive_old_audit_logs(db, archive_dir=archive_dir, retention_days=90, now=NOW,
                                        key=kw.pop("key", KEY), **kw)  # type: ignore[arg-type]


# --- planted files delete nothing --------------------------------------------------------------


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["untagged", "wrong-tag"])
async def test_a_planted_file_naming_current_rows_deletes_nothing(db: Database, tmp_path: Path,
                                                                  key: bytes | None) -> None:
    current = await insert(db, [NOW - timedelta(minutes=m) for m in range(5)])  # recent: never archived
    planted = plant(tmp_path, name_for(current), files.encode_records(current), key)

    result = await run(db, tmp_path)
    assert (result["deleted_count"], result["archived_count"]) == (0, 0)
    assert await ids_in_table(db) == sorted(r.id for r in current)
    # set aside under a name recovery never reads again, and still readable
    assert not planted.exists()
    assert read_archive(tmp_path / (planted.name + ".rejected")) == current
    assert (await run(db, tmp_path))["deleted_count"] == 0


async def test_a_tagged_file_whose_rows_differ_from_the_table_deletes_nothing(db: Database, tmp_path: Path) -> None:
    current = await insert(db, [NOW - timedelta(minutes=m) for m in range(3)])
    forged = [msgspec.structs.replace(r, metadata={"i": "rewritten"}) for r in current]
    planted = plant(tmp_path, name_for(current), files.encode_records(forged), KEY)
    assert files.load(planted).verifies(KEY, planted.name)  # the tag is good: only the content check stops it

    result = await run(db, tmp_path)
    assert result["deleted_count"] == 0
    assert await ids_in_table(db) == sorted(r.id for r in current)
    assert (tmp_path / (planted.name + ".rejected")).exists()


async def test_a_genuine_file_renamed_to_cover_other_rows_deletes_nothing(db: Database, tmp_path: Path) -> None:
    old = await insert(db, [datetime(2026, 2, 1, 12, tzinfo=UTC)])
    current = await insert(db, [NOW])
    current = [r for r in current if r.id not in {o.id for o in old}]

    async def crash(path: Path) -> None:
        raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        await run(db, tmp_path, after_write=crash)
    genuine = next(tmp_path.glob("audit-*.jsonl.gz"))
    # the same bytes under a name that claims today's row: the name is signed too
    (tmp_path / name_for(current)).write_bytes(genuine.read_bytes())
    genuine.unlink()
    await audit_store.delete_ids(db, [r.id for r in old])  # only today's row is left to lose

    assert (await run(db, tmp_path))["deleted_count"] == 0
    assert await ids_in_table(db) == sorted(r.id for r in current)


async def test_a_planted_symlink_is_not_followed(db: Database, tmp_path: Path) -> None:
    current = await insert(db, [NOW])
    target = tmp_path / "elsewhere.gz"
    target.write_bytes(files.gzip_bytes("x", files.encode_records(current), None))
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    (archive_dir / name_for(current)).symlink_to(target)
    assert (await run(db, archive_dir))["deleted_count"] == 0
    assert await ids_in_table(db) == [current[0].id]
    assert target.exists()


def test_recovery_reads_at_most_its_limit(tmp_path: Path) -> None:
    path = plant(tmp_path, file_name("2026-01-01", 1, 1), b"{}\n" * 10_000, KEY)  # 30 kB from a few hundred bytes
    with pytest.raises(files.ArchiveFileCorrupt):
        files.load(path, limit=1000)
    assert len(files.load(path).content) == 30_000


# --- genuine files -----------------------------------------------------------------------------


async def test_a_genuine_interrupted_archive_is_still_recovered(db: Database, tmp_path: Path) -> None:
    old = await insert(db, [datetime(2026, 2, 1, h, tzinfo=UTC) for h in range(4)] + [NOW])
    written: list[Path] = []

    async def crash(path: Path) -> None:
        written.append(path)
        raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        await run(db, tmp_path, after_write=crash)
    assert len(written) == 1 and len(await ids_in_table(db)) == 5  # file written, rows not yet deleted
    assert files.load(written[0]).verifies(KEY, written[0].name)

    result = await run(db, tmp_path)
    assert (result["deleted_count"], result["archived_count"]) == (4, 0)  # deleted, not written again
    assert await ids_in_table(db) == [old[-1].id]
    assert [r.id for r in read_archive(written[0])] == [r.id for r in old[:4]]
    assert not list(tmp_path.glob("*.rejected"))


async def test_recovery_under_another_key_deletes_nothing_and_archives_again(db: Database, tmp_path: Path) -> None:
    await insert(db, [datetime(2026, 2, 1, h, tzinfo=UTC) for h in range(3)])

    async def crash(path: Path) -> None:
        raise SimulatedCrash

    with pytest.raises(SimulatedCrash):
        await run(db, tmp_path, after_write=crash, key=OTHER_KEY)
    result = await run(db, tmp_path)
    # nothing deleted for the unproven file; its rows, still there, went into a new tagged file
    assert (result["archived_count"], result["deleted_count"]) == (3, 3)
    assert await ids_in_table(db) == []
    fresh = next(tmp_path.glob("audit-*.jsonl.gz"))
    assert files.load(fresh).verifies(KEY, fresh.name) and len(read_archive(fresh)) == 3
    assert len(list(tmp_path.glob("*.rejected"))) == 1


async def test_old_untagged_files_stay_readable_and_untouched(db: Database, tmp_path: Path) -> None:
    rows = await insert(db, [datetime(2026, 1, 5, 12, tzinfo=UTC)] * 2)
    old = plant(tmp_path, name_for(rows), files.encode_records(rows), None)
    await audit_store.delete_ids(db, [r.id for r in rows])  # a finished run of the old version
    before = old.read_bytes()
    await insert(db, [datetime(2026, 1, 6, 12, tzinfo=UTC)])
    result = await run(db, tmp_path)
    assert result["archived_count"] == 1
    assert old.read_bytes() == before and read_archive(old) == rows


# --- the job's key -------------------------------------------------------------------------------


def test_the_archive_key_is_derived_from_the_jwt_secret(make_settings: Callable[..., Settings]) -> None:
    secret = "x" * 40
    settings = make_settings(jwt_secret=secret)
    assert files.archive_key(settings) == files.derive_key(secret) != secret.encode()
    # development without JWT_SECRET: the var dir's secret, whichever of the two reads it first
    dev = make_settings(jwt_secret=None, app_env="development")
    assert files.archive_key(dev) == files.derive_key(resolve_secret(dev))
    assert mode(Path(dev.var_dir) / "jwt_secret") == 0o600


async def test_the_job_writes_files_its_own_recovery_accepts(make_settings: Callable[..., Settings],
                                                             tmp_path: Path) -> None:
    settings = make_settings(audit_archive_dir=str(tmp_path / "job-archive"))
    async with app_client(settings) as client:
        deps = client.app.state.deps
        await audit_store.insert_many(deps.db, [AuditEntry(action="READ", resource_type="task",
                                                           timestamp=deps.clock() - timedelta(days=400))], now=NOW)
        result = await ARCHIVE_OLD_AUDIT_LOGS.run(deps)
    (name,) = result.files_written  # type: ignore[attr-defined]
    assert files.load(tmp_path / "job-archive" / name).verifies(files.archive_key(settings), name)


# --- file modes ----------------------------------------------------------------------------------


async def test_archive_files_and_directory_are_private(db: Database, tmp_path: Path) -> None:
    await insert(db, [datetime(2026, 2, 1, 12, tzinfo=UTC)])
    before = mode(tmp_path)
    archive_dir = tmp_path / "var" / "audit-archive"  # neither exists yet
    result = await run(db, archive_dir)
    (name,) = result["files_written"]  # type: ignore[misc]
    assert mode(archive_dir / name) == 0o600
    assert mode(archive_dir / ".archive.lock") == 0o600
    assert mode(archive_dir) == 0o700 and mode(tmp_path / "var") == 0o700
    assert mode(tmp_path) == before  # a directory that was already there keeps its mode


@pytest.mark.sqlite_only
async def test_the_sqlite_file_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "new-dir" / "agent_service.db"
    db = await SqliteDatabase.open(str(path))
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        await db.execute("INSERT INTO t VALUES (1)")
        assert path.with_name(path.name + "-wal").exists() and path.with_name(path.name + "-shm").exists()
        for suffix in ("", "-wal", "-shm"):
            assert mode(path.with_name(path.name + suffix)) == 0o600, suffix
        assert mode(path.parent) == 0o700
        assert mode(tmp_path) == 0o755
    finally:
        await db.close()


@pytest.mark.sqlite_only
async def test_an_existing_sqlite_directory_keeps_its_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o750)
    db = await SqliteDatabase.open(str(tmp_path / "here.db"))
    await db.close()
    assert mode(tmp_path) == 0o750 and mode(tmp_path / "here.db") == 0o600


async def test_a_file_named_with_an_impossible_day_is_ignored(db: Database, tmp_path: Path) -> None:
    await insert(db, [datetime(2026, 2, 1, 12, tzinfo=UTC)])
    plant(tmp_path, file_name("2026-99-99", 1, 1), b"", None)
    assert (await run(db, tmp_path))["archived_count"] == 1
