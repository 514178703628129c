"""The Starlette application. The lifespan owns the database, the Redis pool and HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount

from agent_service.api import agents, health, tasks
from agent_service.api.middleware import RequestContextMiddleware
from agent_service.api.problems import EXCEPTION_HANDLERS
from agent_service.config import Settings, load_settings
from agent_service.logging import configure_logging, get_logger
from agent_service.services.deps import open_deps

API_PREFIX = "/api/v1"
log = get_logger(__name__)


def api_routes() -> list[BaseRoute]:
    # tasks before agents: "/agents/tasks/..." must not be taken for an agent id
    return [*tasks.routes, *agents.routes]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    configure_logging(settings, process="web")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.deps = await open_deps(settings)
        log.info("web.started", env=settings.app_env)
        try:
            yield
        finally:
            await app.state.deps.aclose()

    return Starlette(
        routes=[*health.routes, Mount(API_PREFIX, routes=api_routes())],
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
