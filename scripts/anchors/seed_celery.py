"""The seed's design of `POST invoke-async`: a FastAPI route (pydantic body) that calls
`celery_task.apply_async(...)` on a Redis broker, as the FastAPI + Celery service this project
replaces did. Runs in `.venv-bench/` (Celery's Redis-client pin conflicts with arq's);
scripts/bench_http.py creates that virtualenv and starts this app with its uvicorn.

Two shapes, chosen by the environment:

* bare (no `SEED_DATABASE_URL`): the route only enqueues — no auth, no audit, no SQL row. The
  seed's design at its leanest.
* same work (`SEED_DATABASE_URL` set): what our route does, written the way a FastAPI + SQLAlchemy
  service does it — one pooled connection per request (a dependency), an `X-API-Key` dependency
  that looks the key's SHA-256 up (joined to its user), then one transaction inserting the task row
  and the audit row, then the enqueue. It runs on the very tables, indexes and key of ours:
  bench_http.py creates the database with this service's migrations and bootstrap, so both sides
  write the same rows into the same schema, with the same SQLite pragmas (WAL, synchronous=NORMAL,
  foreign keys). What differs is the design being compared: ours caches the key, batches audit
  rows and shares one INSERT among concurrent submissions; the seed writes each in its request.

    REDIS_URL=redis://… [SEED_DATABASE_URL=sqlite:///…|postgresql://…] \
        .venv-bench/bin/uvicorn seed_celery:app --app-dir scripts/anchors
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

celery_app = Celery("agent_service_seed", broker=os.environ["REDIS_URL"])
celery_app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue="agent-tasks",
                       broker_connection_retry_on_startup=True)
DATABASE_URL = os.environ.get("SEED_DATABASE_URL")
engine: AsyncEngine | None = None


@celery_app.task(name="invoke_agent_async")
def invoke_agent_async(agent_id: str, request: dict[str, Any]) -> dict[str, Any]:  # run by a worker, never here
    return {"agent_id": agent_id, "request": request}


class AgentRequest(BaseModel):
    message: str
    metadata: dict[str, Any] | None = None
    session_id: str | None = None


class TaskAccepted(BaseModel):
    task_id: str
    status: str


class Principal(BaseModel):
    user_id: str
    api_key_id: str


def _engine_url(url: str) -> str:
    if url.startswith("sqlite:"):
        return url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global engine
    if DATABASE_URL:
        sqlite = DATABASE_URL.startswith("sqlite:")
        # SQLite: more pooled connections only contend for the file's write lock (measured: pool 5
        # gave the same req/s with a 700 ms p99 of busy waits). PostgreSQL: one per concurrent
        # request of the benchmark, opened once (an overflow of 10 over 10 reopened connections,
        # each a forked backend: a 2 s p99)
        engine = create_async_engine(_engine_url(DATABASE_URL), pool_size=1 if sqlite else 20, max_overflow=0,
                                     connect_args={"timeout": 30} if sqlite else {})
        if sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    yield
    if engine is not None:
        await engine.dispose()


app = FastAPI(lifespan=lifespan)

_KEY_LOOKUP = text(
    "SELECT k.id AS key_id, u.id AS user_id FROM api_keys k JOIN users u ON u.id = k.user_id"
    " WHERE k.key_hash = :hash AND k.revoked_at IS NULL AND u.is_active = 1"
    " AND (k.expires_at IS NULL OR k.expires_at > :now)")
_INSERT_TASK = text(
    "INSERT INTO tasks (id, owner_id, agent_id, kind, state, tries, request_id, session_id, created_at, updated_at,"
    " payload, priority) VALUES (:id, :owner, :agent, 'invoke', 'PENDING', 0, :request_id, :session, :now, :now,"
    " :payload, 'normal')")
_INSERT_AUDIT = text(
    "INSERT INTO audit_logs (timestamp, actor, actor_user_id, actor_api_key_id, action, resource_type, resource_id,"
    " request_id, method, path, status, client_ip, user_agent, metadata) VALUES (:now, :actor, :user, :key,"
    " 'EXECUTE', 'task', :id, :request_id, 'POST', :path, 202, :ip, :ua, '{}')")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


async def connection() -> AsyncIterator[AsyncConnection]:
    """The request's one pooled connection (FastAPI's per-request session pattern)."""
    assert engine is not None
    async with engine.connect() as conn:
        yield conn


Db = Annotated[AsyncConnection, Depends(connection)]


async def principal(conn: Db, x_api_key: Annotated[str | None, Header()] = None) -> Principal:
    if not x_api_key:
        raise HTTPException(status_code=401, detail="missing API key")
    row = (await conn.execute(_KEY_LOOKUP, {"hash": hashlib.sha256(x_api_key.encode()).hexdigest(),
                                            "now": _now()})).first()
    if row is None:
        raise HTTPException(status_code=401, detail="invalid API key")
    return Principal(user_id=row.user_id, api_key_id=row.key_id)


if DATABASE_URL:
    @app.post("/api/v1/agents/{agent_id}/invoke-async", status_code=202, response_model=TaskAccepted)
    async def invoke_async(agent_id: str, body: AgentRequest, request: Request, conn: Db,
                           who: Annotated[Principal, Depends(principal)]) -> TaskAccepted:
        task_id, request_id, now = uuid.uuid4().hex, uuid.uuid4().hex, _now()
        payload = json.dumps({"agent_id": agent_id, "request": body.model_dump()})
        # the key lookup began the request's transaction (autobegin): both rows join it
        await conn.execute(_INSERT_TASK, {"id": task_id, "owner": who.user_id, "agent": agent_id,
                                          "request_id": request_id, "session": body.session_id, "now": now,
                                          "payload": payload})
        await conn.execute(_INSERT_AUDIT, {"now": now, "actor": f"user:{who.user_id}", "user": who.user_id,
                                           "key": who.api_key_id, "id": task_id, "request_id": request_id,
                                           "path": request.url.path, "ua": request.headers.get("user-agent"),
                                           "ip": request.client.host if request.client else None})
        await conn.commit()
        invoke_agent_async.apply_async((agent_id, body.model_dump()), task_id=task_id)
        return TaskAccepted(task_id=task_id, status="queued")
else:
    @app.post("/api/v1/agents/{agent_id}/invoke-async", status_code=202, response_model=TaskAccepted)
    async def invoke_async_bare(agent_id: str, body: AgentRequest) -> TaskAccepted:
        task = invoke_agent_async.delay(agent_id, body.model_dump())
        return TaskAccepted(task_id=task.id, status="queued")
