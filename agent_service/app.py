"""The Starlette application. The lifespan owns the database, the Redis pool and HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

from agent_service.agents import endpoints as agents
from agent_service.audit import endpoints as audit_logs
from agent_service.config import Settings, load_settings
from agent_service.identity import endpoints as api_keys
from agent_service.identity import endpoints as auth
from agent_service.identity import endpoints as users
from agent_service.identity import service as identity
from agent_service.identity.auth_backend import ApiAuthBackend, CredentialError
from agent_service.identity.schemas import Principal
from agent_service.identity.tokens import resolve_secret
from agent_service.kit.client_ip import parse_trusted
from agent_service.kit.deps import open_deps
from agent_service.kit.endpoint import WWW_AUTHENTICATE
from agent_service.kit.middleware import RequestContextMiddleware
from agent_service.kit.openapi import builder as spec
from agent_service.kit.openapi import docs_pages
from agent_service.kit.problems import EXCEPTION_HANDLERS, problem
from agent_service.kit.ratelimit import LocalLimiter
from agent_service.logging import configure_logging, get_logger
from agent_service.ops import dashboard, metrics
from agent_service.ops import health_endpoints as health
from agent_service.sessions import endpoints as sessions
from agent_service.tasks import admin_endpoints as jobs
from agent_service.tasks import endpoints as tasks

API_PREFIX = "/api/v1"
log = get_logger(__name__)


def api_routes() -> list[BaseRoute]:
    # tasks before agents: "/agents/tasks/..." must not be taken for an agent id
    return [*tasks.routes, *agents.routes, *auth.routes, *users.routes, *api_keys.routes, *jobs.routes,
            *audit_logs.routes, *sessions.routes]


def _auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    error = exc.error if isinstance(exc, CredentialError) else None
    code, detail = (error.code, error.detail) if error else ("unauthorized", "Invalid credentials.")
    status = error.status if error else 401
    headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else dict(error.headers if error else {})
    log.info("auth.failed", code=code, path=conn.url.path)
    return problem(conn.scope, status, code, "Unauthorized" if status == 401 else "Service Unavailable", detail,
                   headers=headers)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    configure_logging(settings, process="web")
    resolve_secret(settings)  # refuse to start on a missing or default secret outside development

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.deps = await open_deps(settings, with_auth=True)
        log.info("web.started", env=settings.app_env)
        try:
            yield
        finally:
            await app.state.deps.aclose()

    trusted = parse_trusted(settings.trusted_proxies)
    app = Starlette(
        routes=[*health.routes, *spec.routes, *docs_pages.routes, *dashboard.routes, *metrics.routes,
                Mount(API_PREFIX, routes=api_routes())],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )

    app.state.trusted_proxies = trusted
    app.state.http_metrics = metrics.HttpMetrics()
    app.state.local_limiter = LocalLimiter()

    async def bearer(token: str) -> Principal:
        return await identity.principal_from_bearer(app.state.deps, token)

    async def api_key(raw: str) -> Principal:
        return await identity.principal_from_api_key(app.state.deps, raw)

    # /metrics checks its own token; the token endpoint takes credentials in its body, and OAuth2
    # clients (the docs' Authorize button) also send their client id as `Authorization: Basic`
    own_auth = frozenset({"/metrics", f"{API_PREFIX}/auth/token"})
    app.user_middleware = [
        Middleware(RequestContextMiddleware),
        Middleware(AuthenticationMiddleware, on_error=_auth_error,
                   backend=ApiAuthBackend(bearer, api_key, own_auth_paths=own_auth)),
    ]
    return app
