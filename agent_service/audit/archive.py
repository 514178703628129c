"""`archive_old_audit_logs`: move rows older than the retention to gzip JSONL files, crash-safely.

Design (each step is safe to be killed after, and a rerun converges):

1. Take an exclusive `flock` on `<archive_dir>/.archive.lock` (non-blocking): a second run on
   this machine returns `status="skipped"` instead of racing the first. (arq's cron already
   runs one instance per slot; this guards a manual trigger overlapping the cron.)
2. Delete stale `*.tmp` files: leftovers of a run killed mid-write, never renamed, so never
   considered archived.
3. Recovery: a final file `audit-<day>-<first id>-<last id>.jsonl.gz` this job wrote is
   complete (it only gets that name by an atomic rename after fsync). If rows it lists are
   still in the table, a previous run died between rename and delete, and those rows are
   deleted now (not written again, whatever `now` the rerun uses) — but only once the file
   has proved itself: its tag verifies under this deployment's key (archive_files.py) AND
   each of those rows in the table is exactly the line the file holds for its id. Anyone who
   can drop a file into the directory could otherwise delete current audit rows by naming
   it well. A file that fails while the table has rows of its day in its id range (untagged:
   planted, or written before tags existed; a wrong tag; rows that differ) deletes nothing:
   it is logged and renamed `*.rejected` (still readable), and those rows are archived again
   into a new, tagged file. A file that cannot be read whole is renamed `*.corrupt`, with the
   same outcome. Files whose range has no rows left are never touched, tagged or not.
4. Main loop: take the oldest `batch_size` rows before the cutoff (index order, timestamp
   then id), split them by UTC day, and for each part: write `.<name>.<random>.tmp`, fsync
   it, rename it to its final name, fsync the directory, then delete exactly those ids.
   A row is deleted only once a durable file holds it, and a durable file's rows are deleted
   before any new batch is chosen, so no row is lost and none is archived twice.

The cutoff is exactly `now - retention_days`. A day straddling the cutoff is finished by the
next run, in another file, so a day may have several files; names sort by day then id.
Files are deterministic for a given batch and key (gzip mtime 0) and each line is one
`AuditRecord` as JSON. Files are created 0600 and a directory this job creates 0700 (audit rows
hold user ids, IPs and paths). File I/O runs in a thread so the worker's event loop keeps
serving other jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import msgspec

from agent_service.audit import archive_files as files
from agent_service.audit import repository as audit_store
from agent_service.audit.archive_files import ArchiveFileCorrupt, archive_key
from agent_service.audit.schemas import AuditRecord
from agent_service.clock import Clock, iso, utcnow
from agent_service.kit.db import Database
from agent_service.kit.private_files import make_private_dir, open_private
from agent_service.logging import get_logger

__all__ = ["ArchiveFileCorrupt", "archive_key", "archive_old_audit_logs", "file_name", "read_archive"]

log = get_logger("agent_service.audit_archive")

AfterWrite = Callable[[Path], Awaitable[None]]

_FILE = re.compile(r"^audit-(\d{4}-\d{2}-\d{2})-(\d{12,})-(\d{12,})\.jsonl\.gz$")
_LOCK = ".archive.lock"


def file_name(day: str, first_id: int, last_id: int) -> str:
    return f"audit-{day}-{first_id:012d}-{last_id:012d}.jsonl.gz"


class _Line(msgspec.Struct):
    id: int


def read_archive(path: Path) -> list[AuditRecord]:
    """Every record of an archive file, tagged or not; raises ArchiveFileCorrupt if it is not a whole file."""
    return files.read_lines(path, AuditRecord)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(directory: Path, name: str, records: list[AuditRecord], key: bytes) -> int:
    """Write (tagged, 0600), fsync, rename into place, fsync the directory; returns the file size."""
    content = files.encode_records(records)
    data = files.gzip_bytes(name, content, files.tag_of(key, name, content))
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    try:
        files.write_tmp(tmp, data)
        os.replace(tmp, directory / name)
    except BaseException:  # a half-written archive file must never be left where recovery reads
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return len(data)


def _final_files(directory: Path) -> list[tuple[Path, str, int, int]]:
    found = []
    for path in sorted(directory.iterdir()):
        m = _FILE.match(path.name)
        if m and _is_day(m.group(1)):  # "audit-2026-99-99-…" must not stop every run with a ValueError
            found.append((path, m.group(1), int(m.group(2)), int(m.group(3))))
    return found


def _is_day(day: str) -> bool:
    try:
        datetime.fromisoformat(day)
    except ValueError:
        return False
    return True


def _remove_temp_files(directory: Path) -> None:
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def _day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return start, start + timedelta(days=1)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[bool]:
    """Yields True while holding the archive lock, False if another run holds it."""
    fd = open_private(directory / _LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW)
    with os.fdopen(fd, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _differs(archive: files.ArchiveFile, rows: dict[int, AuditRecord]) -> bool:
    """Does any of `rows` (the table's rows of the ids the file lists) differ from its line?"""
    held: dict[Any, Any] = {}
    for line in archive.lines():
        record = msgspec.json.decode(line)
        if not isinstance(record, dict) or record.get("id") in held:
            return True
        held[record.get("id")] = record
    # the same id with the same content: the file holds exactly what deleting the row loses
    return any(held.get(log_id) != msgspec.to_builtins(row) for log_id, row in rows.items())


async def _set_aside(path: Path, suffix: str, event: str, **details: Any) -> None:
    log.error(event, file=path.name, renamed_to=path.name + suffix, **details)
    await asyncio.to_thread(path.replace, path.with_name(path.name + suffix))


async def _recover(db: Database, directory: Path, key: bytes) -> int:
    """Finish runs killed between rename and delete, for files that prove themselves; returns rows deleted."""
    deleted = 0
    for path, day, first_id, last_id in await asyncio.to_thread(_final_files, directory):
        since, until = _day_bounds(day)
        if not await audit_store.has_rows(db, first_id=first_id, last_id=last_id, since=since, until=until):
            continue
        try:
            archive = await asyncio.to_thread(files.load, path)
            ids = [msgspec.json.decode(line, type=_Line).id for line in archive.lines()]
        except (ArchiveFileCorrupt, msgspec.DecodeError) as exc:
            # delete happens only after a durable rename, so its rows are still in the table
            await _set_aside(path, ".corrupt", "audit_archive_file_corrupt", error=str(exc)[:300])
            continue
        # checked before a single row is looked up: an unproven file costs no per-id query
        if not archive.verifies(key, path.name):
            await _set_aside(path, ".rejected", "audit_archive_file_rejected",
                             reason="untagged" if archive.tag is None else "tag_mismatch")
            continue
        rows = {log_id: row for log_id in dict.fromkeys(ids) if (row := await audit_store.get(db, log_id))}
        if not rows:
            continue  # a finished file whose day still has other rows in its id range
        if _differs(archive, rows):
            await _set_aside(path, ".rejected", "audit_archive_file_rejected", reason="rows_differ")
            continue
        count = await audit_store.delete_ids(db, list(rows))
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
    key: bytes,
    after_write: AfterWrite | None = None,
    clock: Clock = utcnow,
) -> dict[str, Any]:
    """Archive and delete rows older than `retention_days`. `key` tags the files written and is
    the only key recovery accepts (`archive_key(settings)`). `after_write(path)` runs after each
    file is durable and before its rows are deleted (tests raise there to simulate a crash).
    `now` fixes the cutoff and `started_at`; `clock` gives `completed_at`."""
    started_at = now
    cutoff = now - timedelta(days=retention_days)
    await asyncio.to_thread(make_private_dir, archive_dir)
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
        result["deleted_count"] += await _recover(db, archive_dir, key)
        while batch := await audit_store.oldest_before(db, cutoff, batch_size):
            for day, part in groupby(batch, key=lambda r: r.timestamp.astimezone(UTC).date().isoformat()):
                records = list(part)
                ids = [r.id for r in records]
                name = file_name(day, min(ids), max(ids))
                if await asyncio.to_thread((archive_dir / name).exists):
                    # a fresh batch never matches an existing file after _recover; refuse to overwrite
                    raise FileExistsError(f"{archive_dir / name} exists but its rows are still in the table")
                size = await asyncio.to_thread(_write_file, archive_dir, name, records, key)
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
