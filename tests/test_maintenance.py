"""Maintenance job bodies against real files and a real Redis; time is injected, never slept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_service.identity.jobs import cleanup_token_blacklist
from agent_service.identity.tokens import revoked_prefix
from agent_service.kit.tempfiles import cleanup_temp_files

KEY_PREFIX = "agent-service:"
REVOKED_PREFIX = revoked_prefix(KEY_PREFIX)

NOW = datetime(2030, 6, 1, 3, 0, tzinfo=UTC)
OLD = (NOW - timedelta(hours=30)).timestamp()
NEW = (NOW - timedelta(hours=2)).timestamp()
NOBODY = 65534


def write(path: Path, data: bytes = b"x", *, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def age(path: Path, mtime: float = OLD) -> None:
    """Set the entry's own mtime (a symlink's, not its target's)."""
    os.utime(path, (mtime, mtime), follow_symlinks=False)


async def clean(temp: Path, **kw: Any) -> dict[str, Any]:
    return await cleanup_temp_files(temp, 24, NOW, clock=lambda: NOW, **kw)


# --- temp files ------------------------------------------------------------------------------


async def test_removes_old_files_keeps_new_ones(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    old = [write(temp / "a.bin", b"a" * 1000), write(temp / "sub" / "b.bin", b"b" * 2000)]
    new = [write(temp / "c.bin", b"c" * 50, mtime=NEW), write(temp / "sub" / "d.bin", mtime=NEW)]
    age(temp / "sub")
    result = await clean(temp)
    assert [p.exists() for p in old] == [False, False]
    assert [p.exists() for p in new] == [True, True]
    assert result["deleted_files"] == 2 and result["freed_bytes"] == 3000 and result["errors"] == 0
    assert result["deleted_dirs"] == 0  # sub still holds d.bin
    assert result["status"] == "success" and result["started_at"] == NOW.isoformat(timespec="microseconds")
    assert result["freed_mb"] == round(3000 / 1048576, 2)


async def test_empty_directories_removed_deepest_first_but_never_temp_dir(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    write(temp / "x" / "y" / "z" / "old.txt")
    (temp / "empty-old").mkdir()
    (temp / "empty-new").mkdir()  # a live process may be about to fill it
    for d in ("x/y/z", "x/y", "x", "empty-old"):
        age(temp / d)
    age(temp / "empty-new", NEW)
    age(temp)
    result = await clean(temp)
    assert sorted(p.name for p in temp.iterdir()) == ["empty-new"]
    assert result["deleted_files"] == 1 and result["deleted_dirs"] == 4
    (temp / "empty-new").rmdir()
    await clean(temp)
    assert temp.is_dir()  # the temp dir itself stays, even empty and old


async def test_symlink_to_outside_file_is_removed_but_target_untouched(tmp_path: Path) -> None:
    temp, outside = tmp_path / "tmp", tmp_path / "precious"
    target = write(outside / "data.txt", b"keep me")
    temp.mkdir()
    old_link, new_link = temp / "old-link", temp / "new-link"
    old_link.symlink_to(target)
    new_link.symlink_to(target)
    age(old_link)
    age(new_link, NEW)
    result = await clean(temp)
    assert not old_link.is_symlink() and new_link.is_symlink()
    assert target.read_bytes() == b"keep me" and target.stat().st_mtime == OLD
    assert result["deleted_files"] == 1 and result["freed_bytes"] == 0 and result["errors"] == 0


async def test_symlinked_directory_to_outside_is_not_descended(tmp_path: Path) -> None:
    temp, outside = tmp_path / "tmp", tmp_path / "elsewhere"
    victims = [write(outside / "old.txt"), write(outside / "deep" / "old.txt")]
    age(outside / "deep")
    temp.mkdir()
    link = temp / "dirlink"
    link.symlink_to(outside, target_is_directory=True)
    fresh = temp / "fresh-dirlink"
    fresh.symlink_to(outside, target_is_directory=True)
    age(link)
    age(fresh, NEW)
    result = await clean(temp)
    assert all(v.exists() for v in victims) and (outside / "deep").is_dir()
    assert not link.is_symlink() and fresh.is_symlink()
    assert result["deleted_files"] == 1 and result["deleted_dirs"] == 0


async def test_temp_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    victim = write(real / "old.txt")
    (tmp_path / "tmp").symlink_to(real, target_is_directory=True)
    result = await clean(tmp_path / "tmp")
    assert result["status"] == "error" and "symlink" in result["detail"]
    assert victim.exists() and result["deleted_files"] == 0


async def test_missing_temp_dir_is_a_quiet_success(tmp_path: Path) -> None:
    result = await clean(tmp_path / "nope")
    assert result["status"] == "success"
    assert (result["deleted_files"], result["deleted_dirs"], result["freed_bytes"], result["errors"]) == (0, 0, 0, 0)


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@contextmanager
def undeletable(path: Path) -> Iterator[None]:
    """Make unlinking `path` really fail: immutable as root (root ignores permission bits),
    a read-only parent directory otherwise."""
    if os.geteuid() == 0:
        if not _chattr("+i", path):
            pytest.skip("running as root and chattr +i is not available on this filesystem")
        try:
            yield
        finally:
            _chattr("-i", path)
    else:
        path.parent.chmod(0o555)
        try:
            yield
        finally:
            path.parent.chmod(0o755)


async def test_file_that_cannot_be_removed_is_counted_not_fatal(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    stuck = write(temp / "locked" / "stuck.txt", b"s" * 10)
    others = [write(temp / "a.txt"), write(temp / "z" / "b.txt")]
    for d in ("locked", "z"):
        age(temp / d)
    with undeletable(stuck):
        result = await clean(temp)
    assert stuck.exists() and not any(p.exists() for p in others)
    assert result["errors"] == 1 and result["deleted_files"] == 2 and result["deleted_dirs"] == 1
    assert result["status"] == "success"


# everything is imported before dropping privileges: the interpreter's own files may be root-only
_AS_NOBODY = """
import asyncio, concurrent.futures.thread, json, os, sys
from datetime import datetime
from agent_service.kit.tempfiles import cleanup_temp_files
os.setgroups([]); os.setgid(65534); os.setuid(65534)
now = datetime.fromisoformat(sys.argv[2])
print(json.dumps(asyncio.run(cleanup_temp_files(sys.argv[1], 24, now, clock=lambda: now))))
"""


async def test_unreadable_directory_is_counted_not_fatal() -> None:
    # mkdtemp under /tmp, not tmp_path: pytest's base dir is private to root, and the cleanup
    # must run as an unprivileged user to meet a real permission error
    base = Path(tempfile.mkdtemp(prefix="maint-"))
    try:
        base.chmod(0o755)
        temp = base / "tmp"
        locked = write(temp / "locked" / "secret.txt")
        free = write(temp / "free" / "old.txt")
        for d in ("locked", "free"):
            age(temp / d)
        if os.geteuid() == 0:
            for p in (temp, temp / "free", free):
                os.chown(p, NOBODY, NOBODY)
            (temp / "locked").chmod(0o000)  # root-owned: nobody can neither list nor remove it
            age(temp / "locked")
            proc = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(temp), NOW.isoformat()],
                                  capture_output=True, text=True, timeout=30)
            assert proc.returncode == 0, proc.stderr
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            (temp / "locked").chmod(0o000)
            age(temp / "locked")
            result = await clean(temp)
        (temp / "locked").chmod(0o755)
        assert locked.exists() and not free.exists() and not (temp / "free").exists()
        assert result["errors"] >= 1 and result["deleted_files"] == 1 and result["deleted_dirs"] == 1
    finally:
        if (base / "tmp" / "locked").exists():
            (base / "tmp" / "locked").chmod(0o755)
        shutil.rmtree(base)


# --- token blacklist -------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_blacklist_removes_expired_keeps_live_and_restores_ttl(redis: Redis) -> None:
    now = datetime.now(UTC)
    ts = int(now.timestamp())

    def key(jti: str) -> str:
        return REVOKED_PREFIX + jti

    await redis.set(key("expired-no-ttl"), str(ts - 60))  # e.g. restored from a backup without TTLs
    await redis.set(key("live"), str(ts + 3600), exat=ts + 3600)
    await redis.set(key("live-no-ttl"), str(ts + 7200))
    await redis.set(key("garbage-no-ttl"), "not-a-number")
    await redis.set(key("garbage-ttl"), "???", ex=600)
    await redis.hset(key("wrong-type"), "a", "b")  # type: ignore[misc]
    await redis.set("unrelated:key", str(ts - 60))

    result = await cleanup_token_blacklist(redis, now, key_prefix=KEY_PREFIX, clock=lambda: now)
    assert {k: result[k] for k in ("scanned", "removed", "remaining", "ttl_restored", "status")} == {
        "scanned": 6, "removed": 3, "remaining": 3, "ttl_restored": 1, "status": "success",
    }
    assert sorted(await redis.keys(REVOKED_PREFIX + "*")) == sorted(
        k.encode() for k in (key("live"), key("live-no-ttl"), key("garbage-ttl"))
    )
    assert await redis.get(key("live")) == str(ts + 3600).encode()
    assert 3500 < await redis.ttl(key("live")) <= 3600
    assert 7100 < await redis.ttl(key("live-no-ttl")) <= 7200
    assert await redis.ttl(key("garbage-ttl")) > 0
    assert await redis.exists("unrelated:key")

    again = await cleanup_token_blacklist(redis, now, key_prefix=KEY_PREFIX)
    assert (again["removed"], again["remaining"], again["ttl_restored"]) == (0, 3, 0)


async def test_blacklist_uses_the_injected_time(redis: Redis) -> None:
    now = datetime.now(UTC)
    exp = int(now.timestamp()) + 3600
    await redis.set(REVOKED_PREFIX + "j", str(exp), exat=exp)
    later = now + timedelta(hours=2)  # the token has expired by then: its entry may go
    result = await cleanup_token_blacklist(redis, later, key_prefix=KEY_PREFIX)
    assert (result["removed"], result["remaining"]) == (1, 0)


async def test_blacklist_scans_many_pages_without_keys(redis: Redis) -> None:
    now = datetime.now(UTC)
    ts = int(now.timestamp())
    pipe = redis.pipeline(transaction=False)
    for i in range(1500):
        pipe.set(f"{REVOKED_PREFIX}old-{i}", str(ts - 10 - i))
    for i in range(700):
        pipe.set(f"{REVOKED_PREFIX}live-{i}", str(ts + 3600), exat=ts + 3600)
    for i in range(300):
        pipe.set(f"session-ish:{i}", "1")
    await pipe.execute()
    await redis.config_resetstat()

    result = await cleanup_token_blacklist(redis, now, key_prefix=KEY_PREFIX, scan_count=100)
    assert (result["scanned"], result["removed"], result["remaining"]) == (2200, 1500, 700)
    assert await redis.dbsize() == 1000
    stats = await redis.info("commandstats")
    assert stats["cmdstat_scan"]["calls"] > 5  # many short steps, not one long one
    assert "cmdstat_keys" not in stats
