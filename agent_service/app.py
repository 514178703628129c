"""The Starlette application: composes every domain's routes, the middleware and the lifespan that
owns the process's Deps (database, Redis, HTTP client, the audit writer…)."""

from __future__ import annotations

import gc
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, compile_path

from agent_service.audit import endpoints as audit
from agent_service.audit import service as audit_service
from agent_service.compose import api_routes, provide_parts, root_routes
from agent_service.config import Settings, load_settings
from agent_service.identity import accounts
from agent_service.identity import cache as auth_cache
from agent_service.identity import service as identity_service
from agent_service.identity.auth_backend import ApiAuthBackend, CredentialError
from agent_service.identity.schemas import Principal
from agent_service.identity.tokens import resolve_secret
from agent_service.kit import api_limits, error_reporting, tracing
from agent_service.kit.client_ip import parse_trusted
from agent_service.kit.deps import open_deps
from agent_service.kit.endpoint import WWW_AUTHENTICATE, Public, spec_of
from agent_service.kit.middleware import RequestContextMiddleware
from agent_service.kit.openapi import builder, docs_pages
from agent_service.kit.problems import EXCEPTION_HANDLERS, problem
from agent_service.kit.ratelimit import LocalLimiter
from agent_service.logging import configure_logging, get_logger
from agent_service.ops import dashboard_endpoints as dashboard
from agent_service.ops import endpoints as ops
from agent_service.ops.metrics import HttpMetrics

API_PREFIX = "/api/v1"
GC_YOUNG = 10_000  # allocations between young-generation collections (CPython's default: 700)
STREAM_TOKEN_PATH = re.compile(r"^/api/v1/agents/tasks/(?P<task_id>[^/]{1,200})/events$")
log = get_logger(__name__)


def public_paths(routes: list[BaseRoute], prefix: str = "") -> list[re.Pattern[str]]:
    """The path patterns of every public route (from their endpoint specs)."""
    found: list[re.Pattern[str]] = []
    for r in routes:
        if isinstance(r, Mount):
            found += public_paths(list(r.routes), prefix + r.path)
        elif isinstance(r, Route) and isinstance((getattr(r, "spec", None) or spec_of(r.endpoint)).auth, Public):
            found.append(compile_path(prefix + r.path)[0])
    return found


def _auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    error = exc.error if isinstance(exc, CredentialError) else None
    code, detail = (error.code, error.detail) if error else ("unauthorized", "Invalid credentials.")
    status = error.status if error else 401
    headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else dict(error.headers if error else {})
    log.info("auth.failed", code=code, path=conn.url.path)
    title = error.title if error else "Unauthorized"
    return problem(conn.scope, status, code, title, detail, headers=headers)


CORS_ALLOW_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Last-Event-ID",
                      "X-Request-ID"]
CORS_EXPOSE_HEADERS = ["X-Request-ID", "Location", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                       "RateLimit-Reset", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                       "Idempotent-Replayed", "Content-Disposition"]


def _cors(settings: Settings) -> list[Middleware]:
    """Outermost, so that errors (a 401, a 429) carry the CORS headers too and a browser can read
    them. Credentials are headers here, never cookies; still, `*` never goes with credentials."""
    origins = settings.cors_origin_list
    if not origins:
        return []
    return [Middleware(CORSMiddleware, allow_origins=origins, allow_credentials=origins != ["*"],
                       allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"], allow_headers=CORS_ALLOW_HEADERS,
                       expose_headers=CORS_EXPOSE_HEADERS, max_age=600)]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    settings.require_stores()
    configure_logging(settings, process="web")
    resolve_secret(settings)  # refuse to start on a missing or default secret outside development
    error_reporting.setup(settings, process="web")  # each a no-op unless its setting is set
    tracing.setup(settings, process="web")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        deps = await open_deps(settings)
        provide_parts(deps)
        auth_cache.cache(deps)  # subscribes to the invalidations before the first request
        await audit_service.start_writer(deps)
        await accounts.ensure_bootstrap_admin(deps)
        app.state.deps = deps
        # a young generation large enough that the short-lived objects of a burst of requests do not
        # start a collection every few requests (each one also walks every surviving object)
        gc.set_threshold(GC_YOUNG, 20, 20)
        log.info("web.started", env=settings.app_env)
        try:
            yield
        finally:
            await deps.aclose()
            tracing.shutdown()
            error_reporting.shutdown()

    app = Starlette(
        # the API first: routing tries each route in turn, and nothing else lives under /api/v1
        routes=[Mount(API_PREFIX, routes=api_routes()), *ops.routes, *builder.routes, *docs_pages.routes,
                *dashboard.routes, *root_routes()],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )
    app.state.trusted_proxies = parse_trusted(settings.trusted_proxies)
    app.state.http_metrics = HttpMetrics()
    app.state.local_limiter = LocalLimiter()
    app.state.limit_check = api_limits.check
    app.state.on_auth_failure = api_limits.unauthenticated

    async def bearer(token: str) -> Principal:
        return await identity_service.principal_from_bearer(app.state.deps, token)

    async def api_key(raw: str) -> Principal:
        return await identity_service.principal_from_api_key(app.state.deps, raw)

    async def stream_token(token: str, task_id: str) -> Principal:
        return await identity_service.principal_from_stream_token(app.state.deps, token, task_id)

    app.user_middleware = [
        *tracing.middleware(),  # outermost: the request's span covers everything it does
        *_cors(settings),
        Middleware(RequestContextMiddleware, on_finish=[audit.record_request]),
        Middleware(AuthenticationMiddleware, on_error=_auth_error,
                   backend=ApiAuthBackend(bearer, api_key, public_paths=public_paths(app.routes),
                                          on_failure=api_limits.unauthenticated, stream_token=stream_token,
                                          stream_path=STREAM_TOKEN_PATH)),
    ]
    return app
