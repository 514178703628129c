"""The SQLite driver: one WAL-mode file shared by the web and worker processes of one machine,
with busy_timeout so a writer waits for the other process instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from agent_service.errors import ConfigError
from agent_service.kit.db import Dialect, Row, Tx
from agent_service.kit.db_sqlite_conn import Busy, LoopTx, ThreadTx
from agent_service.kit.private_files import create_private_file, make_private_dir
from agent_service.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")
# journal_size_limit: the WAL file is cut back to this size when the log restarts; above
# RESTART_FRAMES' pages (16384 x (4096 + 24) bytes ~ 67.5 MB), so a restarted log is reused, not
# cut and grown again on every restart
WAL_KEEP_BYTES = 128 * 1024 * 1024
_PRAGMAS = ("synchronous = NORMAL", "foreign_keys = ON", f"journal_size_limit = {WAL_KEEP_BYTES}")
SLOW_SECONDS = 0.002  # a statement that held the loop this long, SLOW_STRIKES times in a row, moves to the thread
SLOW_STRIKES = 3
SLOW_MEMO = 512
CHECKPOINT_ROWS = 2000  # rows changed on the loop's connection between two checkpoints
# A log this long (in pages) after a passive checkpoint gets a RESTART checkpoint. Under steady
# writes a passive one never catches up with the end of the log, so the log never starts afresh:
# measured, it grew by 300 MB per 30 000 requests, and each page read searching an index of
# every frame made the request path 30 % slower round after round.
RESTART_FRAMES = 16384
# How long a RESTART checkpoint waits for writers and readers to let go. Every writer of every
# process waits meanwhile, so briefly; a reader still on an older snapshot then means the next
# checkpoint tries again. Never more than half the busy timeout writers wait for.
RESTART_WAIT_MS = 100


class SqliteDatabase:
    """Autocommit statements, and `transaction()` for work that must be atomic.

    Two connections to the file (kit/db_sqlite_conn.py): statements run on the loop's own thread
    unless the file is locked by another process or the statement has been slow before, and
    then on aiosqlite's thread, which waits out busy_timeout. One asyncio lock covers both, so
    every statement holds it while it runs: two coroutines must never interleave statements
    inside one BEGIN, and a write must never run while a read statement is still open on the
    connection — SQLite would then answer "database is locked" at once instead of waiting.
    """

    dialect: Dialect = "sqlite"
    for_update = ""  # BEGIN IMMEDIATE already holds the file's write lock

    def __init__(self, path: str, loop_conn: sqlite3.Connection, thread_conn: aiosqlite.Connection,
                 busy_timeout_ms: int = 5000) -> None:
        self._path = path
        self._restart_wait_ms = max(1, min(RESTART_WAIT_MS, busy_timeout_ms // 2))
        self._loop = LoopTx(loop_conn, fallback=True)
        self._loop_tx = LoopTx(loop_conn, fallback=False)
        self._thread = ThreadTx(thread_conn)
        self._lock = asyncio.Lock()
        self._slow: set[str] = set()
        self._strikes: dict[str, int] = {}
        self._checkpointed = 0
        self._checkpoint: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str, *, busy_timeout_ms: int = 5000) -> SqliteDatabase:
        if path in (":memory:", ""):  # the two connections would see two different databases
            raise ConfigError("DATABASE_PATH must name a file (SQLite's in-memory databases are not shared).")
        # SQLite would create the file 0644, and its -wal and -shm copy the file's mode: made 0600
        # first (in a 0700 directory if the directory is new), all three stay private
        make_private_dir(Path(path).parent)
        create_private_file(path)
        pending = aiosqlite.connect(path, isolation_level=None)
        # aiosqlite runs each connection in a non-daemon thread, which keeps a stopping process
        # alive if the connection is never closed (a worker that lost Redis); daemon it (private
        # attribute, pinned by a contract test)
        pending._thread.daemon = True
        conn = await pending
        conn.row_factory = aiosqlite.Row
        for pragma in (f"busy_timeout = {int(busy_timeout_ms)}", "journal_mode = WAL", *_PRAGMAS):
            await conn.execute(f"PRAGMA {pragma}")
        loop_conn = await asyncio.to_thread(_loop_connection, path, busy_timeout_ms)
        return cls(path, loop_conn, conn, busy_timeout_ms)

    async def close(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint
        self._loop.conn.close()
        await self._thread.conn.close()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._statement(sql, lambda tx: tx.execute(sql, params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._statement(sql, lambda tx: tx.fetchone(sql, params))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._statement(sql, lambda tx: tx.fetchall(sql, params))

    async def ping(self, *, write: bool = False) -> None:
        if not write:
            await self.fetchone("SELECT 1")
            return
        # a write that changes nothing still needs the write lock: proves the file is writable
        async with self.transaction() as tx:
            await tx.execute("UPDATE schema_migrations SET version = version WHERE 0")

    async def _statement(self, sql: str, op: Callable[[Tx], Awaitable[T]]) -> T:
        """`op` on the loop's connection when it can run there now, else on the thread's. On the
        loop's it completes without suspending, so holding the lock is not needed while no one else
        holds it."""
        fast = sql not in self._slow
        if fast and not self._lock.locked():
            try:
                return await self._on_loop(sql, op)
            except Busy:
                fast = False
        async with self._lock:
            if fast:
                try:
                    return await self._on_loop(sql, op)
                except Busy:
                    pass
            return await op(self._thread)

    async def _on_loop(self, sql: str, op: Callable[[Tx], Awaitable[T]]) -> T:
        began = time.perf_counter()
        try:
            return await op(self._loop)
        finally:
            self._timed(sql, time.perf_counter() - began)
            self._maybe_checkpoint()

    def _timed(self, sql: str, seconds: float) -> None:
        """A statement slow SLOW_STRIKES times in a row runs on the thread from then on: it held up
        the loop's other work. One slow run proves nothing (a GC pass can land in any statement)."""
        if seconds <= SLOW_SECONDS:
            self._strikes.pop(sql, None)
            return
        strikes = self._strikes[sql] = self._strikes.get(sql, 0) + 1
        if strikes >= SLOW_STRIKES:
            if len(self._slow) >= SLOW_MEMO:
                self._slow.clear()
            self._slow.add(sql)
            del self._strikes[sql]
        elif len(self._strikes) >= SLOW_MEMO:
            self._strikes.clear()

    @asynccontextmanager
    async def transaction(self, *, immediate: bool = True) -> AsyncIterator[Tx]:
        """BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock between processes. A
        read transaction (immediate=False: a consistent snapshot for reports) runs on the thread."""
        async with self._lock:
            tx: LoopTx | ThreadTx = self._thread
            if immediate:
                try:
                    self._loop.execute_now("BEGIN IMMEDIATE")
                    tx = self._loop_tx
                except Busy:
                    await self._thread.execute("BEGIN IMMEDIATE")
            else:
                await self._thread.execute("BEGIN")
            try:
                yield tx
                await tx.execute("COMMIT")
            except BaseException:  # whatever stopped the transaction (cancel, a failed commit) must not leave it open
                await _rollback(tx)
                raise
            finally:
                if tx is self._loop_tx:
                    self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        changes = self._loop.conn.total_changes
        if changes - self._checkpointed < CHECKPOINT_ROWS or self._checkpoint is not None:
            return
        self._checkpointed = changes
        self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint(), name="sqlite-checkpoint")

    async def _run_checkpoint(self) -> None:
        try:
            await asyncio.to_thread(_checkpoint, self._path, self._restart_wait_ms)
        finally:
            self._checkpoint = None


def _loop_connection(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """The loop's connection. It never sleeps on a lock once set up, and never checkpoints as a
    side effect of a commit (a checkpoint writes the database file and syncs it):
    `_maybe_checkpoint` runs those on a thread. Its setup, on a thread, does wait out a lock:
    reading the schema (journal_size_limit needs it) can meet the brief exclusive lock another
    process takes when its last connection to the file closes."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in ("wal_autocheckpoint = 0", *_PRAGMAS, "busy_timeout = 0"):
            conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error:  # a lock past the timeout: the connection is not leaked
        conn.close()
        raise
    return conn


def _checkpoint(path: str, restart_wait_ms: int = RESTART_WAIT_MS) -> None:
    """A passive checkpoint on a connection of its own, on a thread and outside the statement lock:
    it copies the WAL into the database file and syncs it, which can take milliseconds that no
    statement should wait for, and it waits for no one (a reader or another checkpoint: next time).

    When the log is still long after it, a RESTART checkpoint copies the few frames written
    meanwhile with new writers held off (ours meet SQLITE_BUSY and wait on the other
    connection), so the next write starts the log from its beginning."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= RESTART_FRAMES:
                conn.execute(f"PRAGMA busy_timeout = {int(restart_wait_ms)}")
                busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                if busy:
                    log.info("db.wal_restart_deferred", frames=frames)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("db.checkpoint_skipped", error=type(exc).__name__)


async def _rollback(tx: LoopTx | ThreadTx) -> None:
    try:
        if isinstance(tx, LoopTx):
            if tx.conn.in_transaction:
                tx.conn.execute("ROLLBACK")
        elif tx.conn.in_transaction:
            await tx.conn.execute("ROLLBACK")
    except (sqlite3.Error, OSError, ValueError):  # ValueError: aiosqlite's connection is closed
        log.warning("db.rollback_failed")
