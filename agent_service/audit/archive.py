"""`archive_old_audit_logs`: move rows older than the retention to gzip JSONL files, crash-safely.

Design (each step is safe to be killed after, and a rerun converges):

1. Take an exclusive `flock` on `<archive_dir>/.archive.lock` (non-blocking): a second run on
   this machine returns `status="skipped"` instead of racing the first. (arq's cron already
   runs one instance per slot; this guards a manual trigger overlapping the cron.)
2. Delete stale `*.tmp` files: leftovers of a run killed mid-write, never renamed, so never
   considered archived.
3. Recovery: every final file `audit-<day>-<first id>-<last id>.jsonl.gz` is complete (it only
   gets that name by an atomic rename after fsync). If rows of that day with ids in its range
   are still in the table, a previous run died between rename and delete: read the file
   (gzip CRC checks it end to end) and delete the ids it lists. Those rows are not written
   again, whatever `now` the rerun uses. A file that cannot be read is renamed `*.corrupt`
   and its rows, still in the table, are archived again into a new file.
4. Main loop: take the oldest `batch_size` rows before the cutoff (index order, timestamp
   then id), split them by UTC day, and for each part: write `.<name>.<random>.tmp`, fsync
   it, rename it to its final name, fsync the directory, then delete exactly those ids.
   A row is deleted only once a durable file holds it, and a durable file's rows are deleted
   before any new batch is chosen, so no row is lost and none is archived twice.

The cutoff is exactly `now - retention_days`. A day straddling the cutoff is finished by the
next run, in another file, so a day may have several files; names sort by day then id.
Files are deterministic for a given batch (gzip mtime 0) and each line is one `AuditRecord`
as JSON. File I/O runs in a thread so the worker's event loop keeps serving other jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gzip
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from agent_service.audit import repository as audit_store
from agent_service.audit.schemas import AuditRecord
from agent_service.clock import Clock, iso, utcnow
from agent_service.kit.db import Database
from agent_service.logging import get_logger

log = get_logger("agent_service.audit_archive")

AfterWrite = Callable[[Path], Awaitable[None]]

_FILE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})-(\d{12,})-(\d{12,})\.jsonl\.gz$")
_LOCK = ".archive.lock"
_encoder = msgspec.json.Encoder()
_T = TypeVar("_T")


class ArchiveFileCorrupt(Exception):
    """A final archive file is unreadable or does not hold the rows its name says."""


def file_name(day: str, first_id: int, last_id: int) -> str:
    return f"audit-{day}-{first_id:012d}-{last_id:012d}.jsonl.gz"


class _Line(msgspec.Struct):
    id: int


def _read(path: Path, typ: type[_T]) -> list[_T]:
    try:
        with gzip.open(path, "rb") as fh:  # reading to the end checks the gzip CRC and length
            return [msgspec.json.decode(line, type=typ) for line in fh if line.strip()]
    except (OSError, EOFError, msgspec.DecodeError) as exc:  # BadGzipFile is an OSError
        raise ArchiveFileCorrupt(f"{path.name}: {exc}") from exc


def read_archive(path: Path) -> list[AuditRecord]:
    """Every record of an archive file; raises ArchiveFileCorrupt if it is not a whole file."""
    return _read(path, AuditRecord)


def archived_ids(path: Path) -> list[int]:
    """Ids only: recovery must not reject a whole file over a field the schema would now refuse."""
    return [line.id for line in _read(path, _Line)]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(directory: Path, name: str, records: list[AuditRecord]) -> int:
    """Write, fsync, rename into place, fsync the directory; returns the file size."""
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        with tmp.open("wb") as raw:
            with gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=0) as gz:
                for record in records:
                    gz.write(_encoder.encode(record) + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, directory / name)
    except BaseException:  # a half-written archive file must never be left where recovery reads
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return (directory / name).stat().st_size


def _final_files(directory: Path) -> list[tuple[Path, str, int, int]]:
    found = []
    for path in sorted(directory.iterdir()):
        m = _FILE.match(path.name)
        if m:
            found.append((path, m.group(1), int(m.group(2)), int(m.group(3))))
    return found


def _remove_temp_files(directory: Path) -> None:
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return start, start + timedelta(days=1)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[bool]:
    """Yields True while holding the archive lock, False if another run holds it."""
    with (directory / _LOCK).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


async def _recover(db: Database, directory: Path) -> int:
    """Finish runs killed between rename and delete; returns rows deleted."""
    deleted = 0
    for path, day, first_id, last_id in await asyncio.to_thread(_final_files, directory):
        since, until = _day_bounds(day)
        if not await audit_store.has_rows(db, first_id=first_id, last_id=last_id, since=since, until=until):
            continue
        try:
            ids = await asyncio.to_thread(archived_ids, path)
        except ArchiveFileCorrupt as exc:
            # delete happens only after a durable rename, so its rows are still in the table
            log.error("audit_archive_file_corrupt", file=path.name, error=str(exc))
            await asyncio.to_thread(path.replace, path.with_name(path.name + ".corrupt"))
            continue
        count = await audit_store.delete_ids(db, ids)
        log.warning("audit_archive_recovered", file=path.name, deleted=count)
        deleted += count
    return deleted


async def archive_old_audit_logs(
    db: Database,
    *,
    archive_dir: Path,
    retention_days: int,
    now: datetime,
    batch_size: int = 1000,
    after_write: AfterWrite | None = None,
    clock: Clock = utcnow,
) -> dict[str, Any]:
    """Archive and delete rows older than `retention_days`. `after_write(path)` runs after each
    file is durable and before its rows are deleted (tests raise there to simulate a crash).
    `now` fixes the cutoff and `started_at`; `clock` gives `completed_at`."""
    started_at = now
    cutoff = now - timedelta(days=retention_days)
    await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "archived_count": 0,
        "deleted_count": 0,
        "files_written": [],
        "bytes_written": 0,
        "cutoff_time": iso(cutoff),
        "status": "success",
        "started_at": iso(started_at),
    }
    with _exclusive(archive_dir) as held:
        if not held:
            log.warning("audit_archive_already_running", archive_dir=str(archive_dir))
            return {**result, "status": "skipped", "completed_at": iso(clock())}
        await asyncio.to_thread(_remove_temp_files, archive_dir)
        result["deleted_count"] += await _recover(db, archive_dir)
        while batch := await audit_store.oldest_before(db, cutoff, batch_size):
            for day, part in groupby(batch, key=lambda r: r.timestamp.astimezone(UTC).date().isoformat()):
                records = list(part)
                ids = [r.id for r in records]
                name = file_name(day, min(ids), max(ids))
                if await asyncio.to_thread((archive_dir / name).exists):
                    # a fresh batch never matches an existing file after _recover; refuse to overwrite
                    raise FileExistsError(f"{archive_dir / name} exists but its rows are still in the table")
                size = await asyncio.to_thread(_write_file, archive_dir, name, records)
                if after_write is not None:
                    await after_write(archive_dir / name)
                result["deleted_count"] += await audit_store.delete_ids(db, ids)
                result["archived_count"] += len(records)
                result["files_written"].append(name)
                result["bytes_written"] += size
    result["completed_at"] = iso(clock())
    log.info("audit_archive_done", **{k: v for k, v in result.items() if k != "files_written"},
             files=len(result["files_written"]))
    return result
