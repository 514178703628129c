"""Sweep old files out of a scratch directory without ever leaving it: the body of the
`cleanup_temp_files` maintenance job (TEMP_DIR), and its result type."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec

from agent_service.clock import Clock, iso, utcnow
from agent_service.logging import get_logger

log = get_logger("agent_service.maintenance")
# deeper trees are left alone (and counted as errors) rather than holding an fd per level
MAX_TEMP_DEPTH = 64


class TempFilesCleanup(msgspec.Struct, kw_only=True, tag="cleanup_temp_files", tag_field="type"):
    """The result of `cleanup_temp_files`; `status: error` with `detail` when TEMP_DIR was refused."""

    deleted_files: int
    deleted_dirs: int
    freed_bytes: int
    freed_mb: float
    errors: int
    cutoff_time: datetime
    status: Literal["success", "error"]
    started_at: datetime
    completed_at: datetime
    detail: str | None = None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Sweep:
    """One pass over TEMP_DIR through directory fds: every name is opened relative to its parent's
    fd with O_NOFOLLOW, so a symlink (even one swapped in mid-run) is never followed and nothing
    outside the directory is reachable."""

    root: str
    cutoff: float
    deleted_files: int = 0
    deleted_dirs: int = 0
    freed_bytes: int = 0
    errors: int = 0

    def fail(self, rel: str, action: str, exc: OSError) -> None:
        self.errors += 1
        log.warning("maintenance.temp_file_error", path=os.path.join(self.root, rel), action=action,
                    errno=exc.errno, error=exc.strerror or str(exc))

    def sweep(self, dir_fd: int, rel: str, depth: int) -> None:
        try:
            with os.scandir(dir_fd) as it:
                entries = list(it)
        except OSError as exc:
            self.fail(rel, "list", exc)
            return
        for entry in entries:
            path = os.path.join(rel, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.fail(path, "stat", exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                self._subdir(dir_fd, entry.name, path, st, depth)
            # sockets, fifos and devices may belong to a live process: never ours to remove
            elif (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and st.st_mtime < self.cutoff:
                self._unlink(dir_fd, entry.name, path, st)

    def _unlink(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)  # removes a symlink itself, never its target
        except FileNotFoundError:
            return
        except OSError as exc:
            self.fail(path, "unlink", exc)
            return
        self.deleted_files += 1
        # a hard link's data lives on under its other names
        if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
            self.freed_bytes += st.st_size

    def _subdir(self, parent_fd: int, name: str, path: str, st: os.stat_result, depth: int) -> None:
        if depth >= MAX_TEMP_DEPTH:
            self.fail(path, "descend", OSError(errno.ELOOP, "directory tree too deep"))
            return
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.fail(path, "open", exc)
            return
        try:
            if not os.path.samestat(st, os.fstat(fd)):
                return  # replaced since the lstat: leave it for the next run
            self.sweep(fd, path, depth + 1)
        finally:
            os.close(fd)
        # the mtime from before the sweep: a directory a live process just made is left alone,
        # one that held only old files goes in this same run
        if st.st_mtime >= self.cutoff:
            return
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                self.fail(path, "rmdir", exc)
            return
        self.deleted_dirs += 1


def _sweep_temp_dir(temp_dir: Path, cutoff: float) -> tuple[_Sweep, str | None]:
    """(counts, refusal reason or None)."""
    root = os.path.abspath(temp_dir)
    sweep = _Sweep(root=root, cutoff=cutoff)
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return sweep, None
    if stat.S_ISLNK(st.st_mode):
        return sweep, "TEMP_DIR is a symlink; refusing to clean through it"
    if not stat.S_ISDIR(st.st_mode):
        return sweep, "TEMP_DIR is not a directory"
    if os.path.dirname(os.path.realpath(root)) == os.path.realpath(root):
        return sweep, "TEMP_DIR is the filesystem root"
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        return sweep, f"TEMP_DIR cannot be opened: {exc.strerror}"
    try:
        if not os.path.samestat(st, os.fstat(fd)):
            return sweep, "TEMP_DIR changed while being opened"
        sweep.sweep(fd, "", 0)
    finally:
        os.close(fd)
    return sweep, None


async def cleanup_temp_files(
    temp_dir: Path | str, max_age_hours: float, now: datetime, *, clock: Clock = utcnow
) -> dict[str, Any]:
    """Remove regular files and symlinks under `temp_dir` not modified for `max_age_hours`, then
    the directories left empty (deepest first; never `temp_dir` itself). A file that cannot be
    removed is counted in `errors` and logged; the run goes on."""
    cutoff = now - timedelta(hours=max_age_hours)
    sweep, refused = await asyncio.to_thread(_sweep_temp_dir, Path(temp_dir), cutoff.timestamp())
    result: dict[str, Any] = {
        "deleted_files": sweep.deleted_files,
        "deleted_dirs": sweep.deleted_dirs,
        "freed_bytes": sweep.freed_bytes,
        "freed_mb": round(sweep.freed_bytes / (1024 * 1024), 2),
        "errors": sweep.errors,
        "cutoff_time": iso(cutoff),
        "status": "error" if refused else "success",
        "started_at": iso(now),
        "completed_at": iso(clock()),
    }
    if refused:
        result["detail"] = refused
        log.error("maintenance.temp_refused", temp_dir=str(temp_dir), detail=refused)
    else:
        log.info("maintenance.temp_cleaned", temp_dir=sweep.root, **result)
    return result
