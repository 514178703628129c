"""Conversation sessions on a real SQLite file and a real PostgreSQL database; time is moved, never slept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from agent_service.config import Settings
from agent_service.errors import NotFound, ValidationFailed
from agent_service.kit import pagination as cursors
from agent_service.kit.db import Database
from agent_service.sessions import repository as session_store
from agent_service.sessions.jobs import cleanup_expired_sessions
from agent_service.sessions.schemas import ChatMessage, SessionQuery
from agent_service.sessions.service import SessionService, make_title
from tests.support.clock import FakeClock
from tests.support.databases import TestDatabase

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(test_database: TestDatabase) -> AsyncIterator[Database]:
    database = await test_database.open()
    yield database
    await database.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def service(db: Database, clock: FakeClock, **overrides: float | int) -> SessionService:
    settings = Settings(session_max_messages=int(overrides.get("max_messages", 100)),
                        session_expiry_hours=float(overrides.get("expiry_hours", 24.0)))
    return SessionService(db=db, settings=settings, clock=clock)


async def test_history_is_passed_back_and_first_use_creates_the_session(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock)
    assert await svc.history_for("alice", "s1", "echo") == []
    created = await svc.get_session("alice", "s1")
    assert created.message_count == 0 and created.title == "" and created.agent_id == "echo"

    await svc.record_exchange("alice", "s1", "echo", "hello there", "hi!")
    clock.advance(minutes=1)
    await svc.record_exchange("alice", "s1", "echo", "how are you?", "fine")
    assert await svc.history_for("alice", "s1", "echo") == [
        ChatMessage(role="user", content="hello there"),
        ChatMessage(role="assistant", content="hi!"),
        ChatMessage(role="user", content="how are you?"),
        ChatMessage(role="assistant", content="fine"),
    ]
    detail = await svc.get_session("alice", "s1")
    assert detail.title == "hello there"  # from the first user message only
    assert detail.message_count == 4 and [m.created_at for m in detail.messages][-1] == T0 + timedelta(minutes=1)


async def test_history_is_capped_oldest_dropped(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, max_messages=5)
    for i in range(4):
        await svc.record_exchange("alice", "s", "echo", f"q{i}", f"a{i}")
    history = await svc.history_for("alice", "s", "echo")
    assert [m.content for m in history] == ["a1", "q2", "a2", "q3", "a3"]
    assert (await svc.get_session("alice", "s")).message_count == 5


def test_title_is_one_line_and_at_most_80_chars() -> None:
    assert make_title("  hello\n  world ") == "hello world"
    long = make_title("x" * 200)
    assert len(long) == 80 and long.endswith("…")


async def test_expiry_moves_with_activity(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, expiry_hours=24)
    await svc.record_exchange("alice", "s", "echo", "first", "one")
    assert (await svc.get_session("alice", "s")).expires_at == T0 + timedelta(hours=24)
    clock.advance(hours=20)
    await svc.record_exchange("alice", "s", "echo", "second", "two")
    clock.advance(hours=20)  # 40 h after creation, 20 h after the last activity
    detail = await svc.get_session("alice", "s")
    assert detail.last_activity == T0 + timedelta(hours=20)
    assert detail.expires_at == T0 + timedelta(hours=44)
    assert detail.message_count == 4


async def test_reading_history_counts_as_activity(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, expiry_hours=1)
    await svc.record_exchange("alice", "s", "echo", "first", "one")
    clock.advance(minutes=50)
    await svc.history_for("alice", "s", "echo")  # an invocation started: it must not expire mid-answer
    clock.advance(minutes=50)
    assert len(await svc.history_for("alice", "s", "echo")) == 2


async def test_expired_session_starts_fresh(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, expiry_hours=1)
    await svc.record_exchange("alice", "s", "echo", "old topic", "old answer")
    clock.advance(hours=1)  # expires_at == now: gone
    with pytest.raises(NotFound):
        await svc.get_session("alice", "s")
    assert (await svc.list_sessions("alice")).items == []
    assert await svc.history_for("alice", "s", "echo") == []
    await svc.record_exchange("alice", "s", "echo", "new topic", "new answer")
    detail = await svc.get_session("alice", "s")
    assert detail.title == "new topic" and detail.created_at == T0 + timedelta(hours=1)
    assert [m.content for m in detail.messages] == ["new topic", "new answer"]


async def test_record_after_expiry_without_history_call_starts_fresh(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, expiry_hours=1)
    await svc.record_exchange("alice", "s", "echo", "old", "old")
    clock.advance(hours=2)
    detail = await svc.record_exchange("alice", "s", "echo", "new", "new")
    assert detail is not None and [m.content for m in detail.messages] == ["new", "new"]


async def test_another_owners_session_is_not_found_and_independent(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock)
    await svc.record_exchange("alice", "shared-id", "echo", "alice says", "to alice")
    with pytest.raises(NotFound):
        await svc.get_session("bob", "shared-id")
    with pytest.raises(NotFound):
        await svc.delete_session("bob", "shared-id")
    # bob using the same id string gets his own, empty conversation
    assert await svc.history_for("bob", "shared-id", "echo") == []
    await svc.record_exchange("bob", "shared-id", "echo", "bob says", "to bob")
    alice = await svc.get_session("alice", "shared-id")
    bob = await svc.get_session("bob", "shared-id")
    assert [m.content for m in alice.messages] == ["alice says", "to alice"]
    assert [m.content for m in bob.messages] == ["bob says", "to bob"]
    assert [s.id for s in (await svc.list_sessions("bob")).items] == ["shared-id"]


async def test_delete_session(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock)
    await svc.record_exchange("alice", "s", "echo", "hi", "hello")
    await svc.delete_session("alice", "s")
    with pytest.raises(NotFound):
        await svc.get_session("alice", "s")
    with pytest.raises(NotFound):
        await svc.delete_session("alice", "s")
    with pytest.raises(NotFound):
        await svc.get_session("alice", "x" * 500)


async def test_list_pages_newest_activity_first(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock)
    for i in range(5):
        await svc.record_exchange("alice", f"s{i}", "echo", f"topic {i}", "ok")
        clock.advance(minutes=1)
    # two sessions touched in the same instant: ordered by id, still no duplicates or gaps
    await svc.record_exchange("alice", "tie-a", "echo", "a", "ok")
    await svc.record_exchange("alice", "tie-b", "echo", "b", "ok")
    clock.advance(minutes=1)
    await svc.record_exchange("alice", "s1", "echo", "back to 1", "ok")
    await svc.record_exchange("bob", "bob-only", "echo", "not alice's", "ok")

    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await svc.list_sessions("alice", SessionQuery(limit=2, cursor=cursor))
        assert len(page.items) <= 2
        seen += [s.id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["s1", "tie-b", "tie-a", "s4", "s3", "s2", "s0"]
    assert not hasattr(page.items[0], "messages")


@pytest.mark.parametrize("cursor", ["not base64 !!", cursors.encode("x", "y"), cursors.encode(1, 2),
                                    cursors.encode("2030-01-01T00:00:00", "s"), cursors.encode("a", "b", "c"),
                                    "A" * 600])
async def test_malformed_cursor_is_a_validation_error(db: Database, clock: FakeClock, cursor: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        await session_store.list_page(db, "alice", now=clock(), limit=10, cursor=cursor)
    assert info.value.errors[0]["path"] == "$.cursor"


async def test_delete_expired_counts_in_batches_and_keeps_live(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, expiry_hours=1)
    for i in range(7):
        await svc.record_exchange(f"user{i % 2}", f"old{i}", "echo", "hi", "hello")
    clock.advance(minutes=30)
    await svc.record_exchange("alice", "live", "echo", "hi", "hello")
    clock.advance(minutes=40)  # the first seven are 70 min old, "live" 40 min
    assert await session_store.delete_expired(db, clock(), batch_size=3) == 7
    assert await session_store.delete_expired(db, clock(), batch_size=3) == 0
    assert [s.id for s in (await svc.list_sessions("alice")).items] == ["live"]


async def test_cleanup_expired_sessions_job(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock, expiry_hours=1)
    await svc.record_exchange("alice", "a", "echo", "hi", "hello")
    await svc.record_exchange("bob", "b", "echo", "hi", "hello")
    clock.advance(minutes=30)
    await svc.record_exchange("alice", "c", "echo", "hi", "hello")
    clock.advance(minutes=45)
    result = await cleanup_expired_sessions(db, clock(), clock=clock)
    assert result == {
        "deleted_count": 2, "cutoff_time": clock().isoformat(timespec="microseconds"), "status": "success",
        "started_at": clock().isoformat(timespec="microseconds"),
        "completed_at": clock().isoformat(timespec="microseconds"),
    }
    assert (await cleanup_expired_sessions(db, clock(), clock=clock))["deleted_count"] == 0
    assert await session_store.get(db, "alice", "c") is not None


async def test_ownerless_calls_store_nothing(db: Database, clock: FakeClock) -> None:
    svc = service(db, clock)
    assert await svc.history_for(None, "s", "echo") == []
    assert await svc.record_exchange(None, "s", "echo", "hi", "hello") is None
    assert await db.fetchall("SELECT * FROM sessions") == []
