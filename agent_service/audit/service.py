"""The audit log: a buffered writer that never fails or slows a request, and the read side.

`AuditWriter.record()` only encodes the entry and appends it to an in-memory deque (no I/O,
no await). A background task writes the buffer in batches of `batch_size` rows, each batch
one transaction, every `flush_interval` seconds or as soon as a full batch is waiting.
A flush that fails (database locked past busy_timeout, disk full, ...) is logged and the
batch goes back to the front of the buffer for the next flush: nothing is lost while the
process lives. The buffer is bounded; past `max_buffer` the oldest entries are dropped and
counted in an error log, so a long database outage cannot exhaust memory. `aclose()` writes
everything still buffered, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from datetime import datetime
from typing import Any

from agent_service.audit import repository as audit_store
from agent_service.audit.failures import FailureAggregator
from agent_service.audit.repository import AuditRow
from agent_service.audit.schemas import AuditAction, AuditEntry, AuditPage, AuditQuery, AuditRecord, AuditStats
from agent_service.clock import Clock, utcnow
from agent_service.config import Settings
from agent_service.errors import NotFound
from agent_service.identity.schemas import Principal
from agent_service.kit.db import Database
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger

log = get_logger("agent_service.audit")

MAX_BUFFER = 100_000


def audit_entry(
    action: AuditAction, resource_type: str, *, principal: Principal | None = None, actor: str | None = None,
    **fields: Any,
) -> AuditEntry:
    """An entry naming its actor: the principal's, else `actor` (`system` for jobs), else `anonymous`."""
    if principal is not None:
        fields.setdefault("actor_user_id", principal.user_id)
        fields.setdefault("actor_api_key_id", principal.api_key_id)
    name = actor or (principal.actor if principal is not None else "anonymous")
    return AuditEntry(action=action, resource_type=resource_type, actor=name, **fields)


class AuditWriter:
    def __init__(
        self,
        db: Database,
        *,
        flush_interval: float = 0.5,
        batch_size: int = 200,
        max_buffer: int = MAX_BUFFER,
        clock: Clock = utcnow,
    ) -> None:
        self._db = db
        self._interval = flush_interval
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._clock = clock
        self._buffer: deque[AuditRow] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failures = FailureAggregator()
        self._closed = False
        self.dropped = 0  # entries lost to the buffer bound since start (also logged)
        self.written = 0

    @classmethod
    def of(cls, deps: Deps) -> AuditWriter:
        """The process's writer (a Deps part); it is flushed and closed with the process."""
        writer = cls.from_settings(deps.db, deps.settings, clock=deps.clock)
        deps.on_close(writer.aclose)
        return writer

    @classmethod
    def from_settings(cls, db: Database, settings: Settings, *, clock: Clock = utcnow) -> AuditWriter:
        return cls(db, flush_interval=settings.audit_flush_interval, batch_size=settings.audit_batch_size,
                   clock=clock)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, entry: AuditEntry) -> None:
        """Queue one entry. Synchronous, no I/O, and never raises into the caller."""
        try:
            if self._closed:
                log.error("audit_entry_after_close", action=entry.action, resource_type=entry.resource_type)
                return
            self._buffer.append(audit_store.to_row(entry, now=self._clock()))
            self._trim()
            if len(self._buffer) >= self._batch_size:
                self._wake.set()
        except Exception:  # broad: record() promises never to raise into the request it audits
            log.exception("audit_record_failed")

    def record_failure(self, entry: AuditEntry) -> None:
        """A failed sign-in: aggregated per client address (audit/failures.py)."""
        for e in self._failures.admit(entry, self._clock()):
            self.record(e)

    def _trim(self) -> None:
        over = len(self._buffer) - self._max_buffer
        if over > 0:
            for _ in range(over):
                self._buffer.popleft()
            self.dropped += over
            log.error("audit_buffer_overflow", dropped_now=over, dropped_total=self.dropped,
                      max_buffer=self._max_buffer)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if not await self.flush() and not self._stop.is_set():
                # the database is in trouble: wait a full interval rather than retry on every record()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._interval)

    async def flush(self) -> bool:
        """Write everything buffered when called, batch by batch. False if a batch failed (it stays
        buffered). Entries recorded meanwhile wait for the next flush: under steady traffic a
        flush that chased them would write a small batch after each small batch, and on SQLite
        every one of those holds the file's write lock that the requests' own writes wait for."""
        if not self._closed:
            for summary in self._failures.due(self._clock()):
                self.record(summary)
        async with self._flush_lock:
            todo = len(self._buffer)
            while todo > 0 and self._buffer:
                # take the batch out first: record() may trim the buffer while we await the insert
                batch = [self._buffer.popleft() for _ in range(min(self._batch_size, todo, len(self._buffer)))]
                todo -= len(batch)
                try:
                    await audit_store.insert_rows(self._db, batch)
                except BaseException as exc:  # broad: a failed or cancelled insert puts its batch back
                    self._buffer.extendleft(reversed(batch))
                    self._trim()
                    if not isinstance(exc, Exception):
                        raise
                    log.error("audit_flush_failed", pending=len(self._buffer), error=repr(exc))
                    return False
                self.written += len(batch)
            return True

    async def aclose(self) -> None:
        """Stop the background task and write what is left; never raises."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:  # shutdown goes on whatever the writer task died of; the flush below retries
                log.exception("audit_writer_task_failed")
            self._task = None
        for summary in self._failures.due(self._clock(), everything=True):
            self.record(summary)
        self._closed = True
        if not await self.flush():
            log.error("audit_entries_lost_at_close", lost=len(self._buffer))


def writer(deps: Deps) -> AuditWriter:
    return deps.part(AuditWriter.of)


async def start_writer(deps: Deps) -> None:
    await writer(deps).start()


def record(deps: Deps, entry: AuditEntry) -> None:
    """Append to the audit log without waiting or failing."""
    writer(deps).record(entry)


def record_failed_auth(deps: Deps, entry: AuditEntry) -> None:
    writer(deps).record_failure(entry)


async def list_logs(db: Database, query: AuditQuery) -> AuditPage:
    return await audit_store.query(db, query)


async def get_log(db: Database, log_id: int) -> AuditRecord:
    record = await audit_store.get(db, log_id)
    if record is None:
        raise NotFound(f"No audit log entry with id {log_id}.", code="audit_log_not_found")
    return record


async def stats(db: Database, *, since: datetime | None = None, until: datetime | None = None) -> AuditStats:
    return await audit_store.stats(db, since=since, until=until)
