"""Audit log: the buffered writer, the query filters, cursor pages and stats, on a real SQLite file and a
real PostgreSQL database (the locked-file tests are SQLite's alone)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import pytest

from agent_service.audit import repository as audit_store
from agent_service.audit import service as audit
from agent_service.audit.repository import AuditRow
from agent_service.audit.schemas import AuditEntry, AuditQuery
from agent_service.audit.service import AuditWriter, audit_entry
from agent_service.errors import NotFound, ValidationFailed
from agent_service.identity.schemas import Principal
from agent_service.kit.db import Database
from tests.support.databases import TestDatabase
from tests.support.waiting import wait_for

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db_path(test_database: TestDatabase) -> Path:
    return test_database.path


@pytest.fixture
async def db(test_database: TestDatabase) -> AsyncIterator[Database]:
    # a short busy timeout so the "database locked" tests fail fast instead of waiting 5 s
    database = await test_database.open(busy_timeout_ms=50)
    yield database
    await database.close()


def entry(n: int, **fields: Any) -> AuditEntry:
    return AuditEntry(action="EXECUTE", resource_type="agent", actor="user:u1", metadata={"n": n}, **fields)


async def count(db: Database) -> int:
    row = await db.fetchone("SELECT COUNT(*) FROM audit_logs")
    assert row is not None
    return int(row[0])


async def stored_ns(db: Database) -> list[int]:
    rows = await db.fetchall("SELECT metadata FROM audit_logs ORDER BY id")
    return [msgspec.json.decode(r[0])["n"] for r in rows]


async def settle() -> None:
    """Let ready tasks run (no wall-clock wait): enough for a flush that was going to happen."""
    for _ in range(50):
        await asyncio.sleep(0)


# --- writer ---------------------------------------------------------------------------------


async def test_writer_flushes_a_full_batch_without_waiting_for_the_interval(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    real_insert = audit_store.insert_rows

    async def spy(database: Database, rows: Sequence[AuditRow]) -> None:
        batches.append(len(rows))
        await real_insert(database, rows)

    monkeypatch.setattr(audit_store, "insert_rows", spy)
    writer = AuditWriter(db, flush_interval=3600, batch_size=10, clock=lambda: T0)
    await writer.start()
    for n in range(9):
        writer.record(entry(n))
    await settle()
    assert (await count(db), writer.pending) == (0, 9)  # below batch size: waits for the interval
    for n in range(9, 25):
        writer.record(entry(n))

    async def all_written() -> bool:
        return await count(db) == 25

    await wait_for(all_written, timeout=5)
    assert batches == [10, 10, 5]
    assert await stored_ns(db) == list(range(25))  # order of record() is kept
    await writer.aclose()


async def test_writer_flushes_on_the_interval(db: Database) -> None:
    writer = AuditWriter(db, flush_interval=0.05, batch_size=1000)
    await writer.start()
    for n in range(3):
        writer.record(entry(n))

    async def written() -> bool:
        return await count(db) == 3

    await wait_for(written, timeout=5)
    assert writer.pending == 0
    await writer.aclose()


async def test_aclose_writes_every_buffered_entry(db: Database) -> None:
    writer = AuditWriter(db, flush_interval=3600, batch_size=50, clock=lambda: T0)
    await writer.start()
    for n in range(1234):
        writer.record(entry(n))
    await writer.aclose()
    assert await stored_ns(db) == list(range(1234))
    writer.record(entry(9999))  # after close: logged and ignored, never raised
    assert writer.pending == 0


async def test_record_fills_the_timestamp_at_record_time(db: Database) -> None:
    now = [T0]
    writer = AuditWriter(db, flush_interval=3600, batch_size=100, clock=lambda: now[0])
    writer.record(entry(0))
    now[0] = T0 + timedelta(hours=1)
    writer.record(entry(1, timestamp=T0 - timedelta(days=1)))  # an explicit time is kept
    await writer.aclose()
    rows = await db.fetchall("SELECT timestamp FROM audit_logs ORDER BY id")
    assert [r[0] for r in rows] == ["2026-03-01T12:00:00.000000+00:00", "2026-02-28T12:00:00.000000+00:00"]


@pytest.mark.sqlite_only  # another connection holding SQLite's file-wide write lock
async def test_a_locked_database_keeps_entries_for_the_next_flush(db: Database, db_path: Path) -> None:
    writer = AuditWriter(db, flush_interval=3600, batch_size=2)
    async with aiosqlite.connect(db_path, isolation_level=None) as other:
        await other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        for n in range(5):
            writer.record(entry(n))
        assert await writer.flush() is False
        assert writer.pending == 5
        await other.execute("ROLLBACK")
    assert await writer.flush() is True
    assert await stored_ns(db) == [0, 1, 2, 3, 4]
    await writer.aclose()


@pytest.mark.sqlite_only  # the full buffer is made with SQLite's file-wide write lock
async def test_the_buffer_is_bounded_and_drops_the_oldest(db: Database, db_path: Path) -> None:
    writer = AuditWriter(db, flush_interval=3600, batch_size=2, max_buffer=3)
    async with aiosqlite.connect(db_path, isolation_level=None) as other:
        await other.execute("BEGIN IMMEDIATE")
        for n in range(5):
            writer.record(entry(n))
        assert await writer.flush() is False
        await other.execute("ROLLBACK")
    assert (writer.pending, writer.dropped) == (3, 2)
    await writer.aclose()
    assert await stored_ns(db) == [2, 3, 4]


async def test_record_never_raises_even_when_the_database_is_closed(db: Database) -> None:
    writer = AuditWriter(db, flush_interval=3600, batch_size=1)
    await writer.start()
    await db.close()
    writer.record(entry(1))
    writer.record(AuditEntry(action="READ", resource_type="x", metadata={"bad": object()}))  # unencodable
    await settle()
    assert writer.pending == 1  # the good entry is kept for a later flush; the bad one alone is dropped
    assert await writer.flush() is False
    await writer.aclose()  # logs the loss, does not raise


# --- queries --------------------------------------------------------------------------------


async def seed(db: Database) -> None:
    m = timedelta(minutes=1)
    await audit_store.insert_many(db, [
        AuditEntry(action="LOGIN", resource_type="auth", actor="user:a", actor_user_id="a", status=200,
                   request_id="r1", timestamp=T0),
        AuditEntry(action="FAILED_AUTH", resource_type="auth", status=401, request_id="r2",
                   client_ip="10.0.0.9", timestamp=T0 + m),
        AuditEntry(action="EXECUTE", resource_type="agent", resource_id="echo", actor="api_key:k",
                   actor_user_id="a", actor_api_key_id="k", status=200, request_id="r3", timestamp=T0 + 2 * m),
        AuditEntry(action="CANCEL", resource_type="task", resource_id="t1", actor="user:a", status=202,
                   request_id="r4", timestamp=T0 + 3 * m),
        AuditEntry(action="DELETE", resource_type="api_key", resource_id="k", actor="user:b", status=204,
                   request_id="r5", method="DELETE", path="/api/v1/api-keys/k", user_agent="ua",
                   metadata={"why": "rotated"}, timestamp=T0 + 4 * m),
    ], now=T0)


async def ids(db: Database, **filters: Any) -> list[int]:
    page = await audit.list_logs(db, AuditQuery(**filters))
    return [r.id for r in page.items]


async def test_each_filter_works(db: Database) -> None:
    await seed(db)
    assert await ids(db) == [5, 4, 3, 2, 1]
    assert await ids(db, actor="user:a") == [4, 1]
    assert await ids(db, action="FAILED_AUTH") == [2]
    assert await ids(db, resource_type="auth") == [2, 1]
    assert await ids(db, resource_type="task", resource_id="t1") == [4]
    assert await ids(db, resource_id="echo") == [3]
    assert await ids(db, request_id="r5") == [5]
    assert await ids(db, status=200) == [3, 1]
    assert await ids(db, since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)) == [3, 2]
    assert await ids(db, actor="user:a", action="LOGIN") == [1]
    assert await ids(db, actor="nobody") == []
    record = await audit.get_log(db, 5)
    assert (record.method, record.path, record.user_agent, record.metadata) == (
        "DELETE", "/api/v1/api-keys/k", "ua", {"why": "rotated"})
    assert record.timestamp == T0 + timedelta(minutes=4)


async def test_get_log_of_a_missing_id_is_not_found(db: Database) -> None:
    for missing in (1, 0, -1, 2**70):
        with pytest.raises(NotFound):
            await audit.get_log(db, missing)


async def test_cursor_pages_newest_first_without_duplicates_or_gaps(db: Database) -> None:
    # ties on the timestamp are the hard case for a cursor: several rows share T0 and T0+1s
    stamps = [T0, T0, T0 + timedelta(seconds=1), T0, T0 + timedelta(seconds=1), T0 - timedelta(seconds=1),
              T0 + timedelta(seconds=2), T0]
    await audit_store.insert_many(db, [entry(n, timestamp=t) for n, t in enumerate(stamps)], now=T0)
    expected = [r.id for r in (await audit.list_logs(db, AuditQuery(limit=200))).items]
    assert expected == [7, 5, 3, 8, 4, 2, 1, 6]  # (timestamp, id) descending

    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        page = await audit.list_logs(db, AuditQuery(limit=3, cursor=cursor))
        pages.append([r.id for r in page.items])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        if len(pages) == 1:  # a row written meanwhile must not shift the later pages
            await audit_store.insert_many(db, [entry(99, timestamp=T0 + timedelta(hours=1))], now=T0)
    assert pages == [[7, 5, 3], [8, 4, 2], [1, 6]]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "!!!",
    "é",
    "a",
    b64(b"garbage"),
    b64(b'{"ts": 1}'),
    b64(b'["not a time", 1]'),
    b64(b'["2026-03-01T12:00:00", 1]'),  # naive
    b64(b'["2026-03-01T12:00:00+00:00", 0]'),
    b64(b'["2026-03-01T12:00:00+00:00", "1"]'),
    b64(b'["2026-03-01T12:00:00+00:00", 99999999999999999999999]'),
    b64(b'["2026-03-01T12:00:00+00:00", 1, 2]'),
])
async def test_a_malformed_cursor_is_a_validation_error(db: Database, cursor: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        await audit.list_logs(db, AuditQuery(cursor=cursor))
    assert info.value.status == 422
    assert [e["path"] for e in info.value.errors] == ["$.cursor"]


def test_query_decodes_from_query_string_values() -> None:
    q = msgspec.convert({"limit": "20", "status": "401", "since": "2026-03-01T00:00:00Z", "action": "LOGIN"},
                        AuditQuery, strict=False)
    assert (q.limit, q.status, q.since, q.action) == (20, 401, datetime(2026, 3, 1, tzinfo=UTC), "LOGIN")
    assert AuditQuery().limit == 50
    for bad in ({"limit": "0"}, {"limit": "201"}, {"action": "HACK"}, {"since": "2026-03-01T00:00:00"},
                {"status": "42"}, {"unknown": "1"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, AuditQuery, strict=False)


async def test_stats_totals_over_a_range(db: Database) -> None:
    await seed(db)
    s = await audit.stats(db)
    assert (s.total, s.unique_actors) == (5, 4)  # user:a, anonymous, api_key:k, user:b
    assert s.by_action == {"LOGIN": 1, "FAILED_AUTH": 1, "EXECUTE": 1, "CANCEL": 1, "DELETE": 1}
    assert s.by_resource_type == {"auth": 2, "agent": 1, "task": 1, "api_key": 1}
    assert (s.first_at, s.last_at) == (T0, T0 + timedelta(minutes=4))
    since, until = T0 + timedelta(minutes=1), T0 + timedelta(minutes=4)
    s = await audit.stats(db, since=since, until=until)
    assert (s.total, s.unique_actors, s.since, s.until) == (3, 3, since, until)
    assert s.by_resource_type == {"auth": 1, "agent": 1, "task": 1}
    empty = await audit.stats(db, since=T0 + timedelta(days=1))
    assert (empty.total, empty.unique_actors, empty.by_action, empty.first_at) == (0, 0, {}, None)


def test_audit_entry_names_the_actor() -> None:
    user = Principal(user_id="u1", email="u@x")
    key = Principal(user_id="u1", email="u@x", api_key_id="k1")
    e = audit_entry("LOGIN", "auth", principal=user, request_id="r")
    assert (e.actor, e.actor_user_id, e.actor_api_key_id, e.request_id) == ("user:u1", "u1", None, "r")
    e = audit_entry("EXECUTE", "agent", principal=key, resource_id="echo")
    assert (e.actor, e.actor_user_id, e.actor_api_key_id) == ("api_key:k1", "u1", "k1")
    assert audit_entry("EXECUTE", "maintenance", actor="system").actor == "system"
    assert audit_entry("FAILED_AUTH", "auth").actor == "anonymous"
