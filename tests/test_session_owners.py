"""Session ids are per owner: the same client-chosen id of two users names two sessions, someone
else's session is never readable, and concurrent first uses of one id lose no exchange."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from agent_service.config import Settings
from agent_service.kit.db import Database
from agent_service.sessions.service import SessionService
from tests.support.apps import Client, add_user
from tests.support.databases import TestDatabase

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POOL_SIZE = 10  # TestDatabase.open's PostgreSQL pool


@pytest.fixture
async def db(test_database: TestDatabase) -> AsyncIterator[Database]:
    database = await test_database.open()
    yield database
    await database.close()


def service(db: Database, clock: object = lambda: T0) -> SessionService:
    return SessionService(db=db, settings=Settings(session_max_messages=1000), clock=clock)  # type: ignore[arg-type]


async def warm_pool(db: Database, size: int = POOL_SIZE) -> None:
    """Open every pooled PostgreSQL connection first: a first use that waits for a connection to be
    made would start after the others have finished, and the race under test would not happen."""
    if db.dialect != "postgresql":
        return
    held = 0
    everyone_in = asyncio.Event()

    async def hold() -> None:
        nonlocal held
        async with db.transaction() as tx:
            await tx.fetchone("SELECT 1")
            held += 1
            if held == size:
                everyone_in.set()
            await everyone_in.wait()

    await asyncio.wait_for(asyncio.gather(*(hold() for _ in range(size))), 10)


async def invoke(client: Client, message: str, session_id: str, headers: dict[str, str] | None = None) -> int:
    resp = await client.post("/api/v1/agents/echo/invoke", json={"message": message, "session_id": session_id},
                             headers=headers)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["metadata"]["history_length"])


async def test_two_users_with_one_session_id_have_two_histories(client: Client) -> None:
    bob = {"X-API-Key": await add_user(client.app, "bob@example.com")}
    assert await invoke(client, "alice one", "chat-1") == 0
    # the attack run's finding: this answered 404 because alice had used "chat-1" first
    assert await invoke(client, "bob one", "chat-1", bob) == 0
    assert await invoke(client, "alice two", "chat-1") == 2
    assert await invoke(client, "bob two", "chat-1", bob) == 2

    alice_view = (await client.get("/api/v1/sessions/chat-1")).json()
    bob_view = (await client.get("/api/v1/sessions/chat-1", headers=bob)).json()
    assert [m["content"] for m in alice_view["messages"]] == ["alice one"] * 2 + ["alice two"] * 2
    assert [m["content"] for m in bob_view["messages"]] == ["bob one"] * 2 + ["bob two"] * 2
    assert alice_view["title"] == "alice one" and bob_view["title"] == "bob one"
    for headers in (None, bob):
        items = (await client.get("/api/v1/sessions", headers=headers)).json()["items"]
        assert [s["id"] for s in items] == ["chat-1"]

    # deleting one's own leaves the other's alone
    assert (await client.delete("/api/v1/sessions/chat-1", headers=bob)).status_code == 204
    assert (await client.get("/api/v1/sessions/chat-1", headers=bob)).status_code == 404
    assert (await client.get("/api/v1/sessions/chat-1")).json()["message_count"] == 4


async def test_someone_elses_session_is_404_on_get_and_delete(client: Client) -> None:
    await invoke(client, "secret", "alice-only")
    mallory = {"X-API-Key": await add_user(client.app, "mallory@example.com")}
    for method in ("GET", "DELETE"):
        resp = await client.request(method, "/api/v1/sessions/alice-only", headers=mallory)
        assert resp.status_code == 404, method
        body = resp.json()
        assert body["code"] == "session_not_found" and "secret" not in resp.text
    # the same answer as for an id nobody ever used: no existence oracle
    unused = await client.get("/api/v1/sessions/never-used", headers=mallory)
    assert unused.status_code == 404 and unused.json()["code"] == "session_not_found"
    assert (await client.get("/api/v1/sessions", headers=mallory)).json()["items"] == []
    kept = (await client.get("/api/v1/sessions/alice-only")).json()
    assert [m["content"] for m in kept["messages"]] == ["secret", "secret"]


async def test_the_key_of_the_sessions_table_is_owner_and_id(db: Database) -> None:
    if db.dialect == "sqlite":
        rows = await db.fetchall("PRAGMA table_info(sessions)")
        key = [r["name"] for r in sorted((r for r in rows if r["pk"]), key=lambda r: r["pk"])]
    else:
        rows = await db.fetchall(
            "SELECT a.attname AS name FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = 'sessions'::regclass AND i.indisprimary ORDER BY k.n"
        )
        key = [r["name"] for r in rows]
    assert key == ["owner_id", "id"]


async def test_concurrent_first_uses_of_one_id_lose_no_exchange(db: Database) -> None:
    svc = service(db)
    await warm_pool(db)
    n = POOL_SIZE
    # every exchange starts on a session that does not exist yet (PostgreSQL: FOR UPDATE of a row
    # that is not there locks nothing; each must still build on the ones before it)
    results = await asyncio.gather(*(svc.record_exchange("alice", "race", "echo", f"q{i}", f"a{i}")
                                     for i in range(n)))
    assert all(r is not None for r in results)
    detail = await svc.get_session("alice", "race")
    assert detail.message_count == 2 * n
    assert sorted(m.content for m in detail.messages) == sorted([f"q{i}" for i in range(n)] +
                                                                [f"a{i}" for i in range(n)])
    # each exchange is whole and in order: a user message followed by its own reply
    pairs = [(detail.messages[i].content, detail.messages[i + 1].content) for i in range(0, 2 * n, 2)]
    assert all(q[1:] == a[1:] and q[0] == "q" and a[0] == "a" for q, a in pairs)


async def test_concurrent_first_use_through_history_and_record(db: Database) -> None:
    svc = service(db)
    await warm_pool(db)

    async def one_invocation(i: int) -> None:
        await svc.history_for("alice", "mixed", "echo")
        await svc.record_exchange("alice", "mixed", "echo", f"q{i}", f"a{i}")

    await asyncio.gather(*(one_invocation(i) for i in range(8)), svc.history_for("bob", "mixed", "echo"))
    assert (await svc.get_session("alice", "mixed")).message_count == 16
    assert (await svc.get_session("bob", "mixed")).message_count == 0


async def test_concurrent_first_invocations_through_the_api(client: Client, settings: Settings) -> None:
    await warm_pool(client.app.state.deps.db, settings.db_pool_max)
    responses = await asyncio.gather(*(
        client.post("/api/v1/agents/echo/invoke", json={"message": f"m{i}", "session_id": "api-race"})
        for i in range(8)
    ))
    assert [r.status_code for r in responses] == [200] * 8
    detail = (await client.get("/api/v1/sessions/api-race")).json()
    assert detail["message_count"] == 16
