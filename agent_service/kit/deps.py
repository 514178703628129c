"""Everything a service needs, built once per process (web lifespan or worker start-up)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from agent_service.agents.registry import AgentRegistry
from agent_service.audit.schemas import AuditEntry
from agent_service.audit.service import AuditWriter
from agent_service.clock import Clock, utcnow
from agent_service.config import Settings
from agent_service.identity.tokens import TokenVerifier, resolve_secret
from agent_service.kit.db import Database
from agent_service.kit.metrics import JobMetrics
from agent_service.kit.migrations import migrate
from agent_service.kit.ratelimit import RateLimiter
from agent_service.ops.workers import WorkerStats
from agent_service.tasks import queue as job_queue
from agent_service.tasks.live import TaskEvents
from agent_service.tasks.queue import JobQueue, QueueConnection


@dataclass
class AuthKit:
    secret: str
    verifier: TokenVerifier


@dataclass
class Deps:
    settings: Settings
    db: Database
    redis: QueueConnection
    queue: JobQueue
    events: TaskEvents
    agents: AgentRegistry
    http: httpx.AsyncClient
    clock: Clock = utcnow
    auth_kit: AuthKit | None = None
    stats: WorkerStats | None = None  # set in worker processes
    audit: AuditWriter | None = None
    limiter: RateLimiter | None = None
    metrics: JobMetrics | None = None
    rng: Callable[[], float] = field(default=random.random)

    @property
    def auth(self) -> AuthKit:
        if self.auth_kit is None:
            raise RuntimeError("authentication is not set up in this process")
        return self.auth_kit

    async def aclose(self, *, close_redis: bool = True) -> None:
        if self.audit is not None:
            await self.audit.aclose()  # before the database: nothing buffered is lost
        await self.http.aclose()
        if close_redis:
            await self.redis.aclose()
        await self.db.close()

    def record(self, entry: AuditEntry) -> None:
        """Append to the audit log without waiting or failing (see services/audit.py)."""
        if self.audit is not None:
            self.audit.record(entry)


async def open_deps(
    settings: Settings, *, redis: QueueConnection | None = None, clock: Clock = utcnow, with_auth: bool = False
) -> Deps:
    db = await Database.open(settings.database_path, busy_timeout_ms=settings.db_busy_timeout_ms)
    await migrate(db)
    http = httpx.AsyncClient(timeout=settings.llm_timeout)
    redis = redis if redis is not None else job_queue.connect(settings)
    auth_kit = None
    if with_auth:
        secret = resolve_secret(settings)
        auth_kit = AuthKit(secret=secret, verifier=TokenVerifier(settings, secret, redis))
    audit = AuditWriter.from_settings(db, settings, clock=clock)
    await audit.start()
    return Deps(
        limiter=RateLimiter(redis),
        metrics=JobMetrics(redis),
        audit=audit,
        auth_kit=auth_kit,
        settings=settings,
        db=db,
        redis=redis,
        queue=JobQueue(redis, settings),
        events=TaskEvents(redis, ttl=settings.job_result_ttl),
        agents=AgentRegistry.from_settings(settings, http),
        http=http,
        clock=clock,
    )
