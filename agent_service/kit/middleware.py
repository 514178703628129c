"""Request context: X-Request-ID in and out, bound into every log line, one access line per request,
and a last-resort problem+json 500 that still carries the request id."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.audit.schemas import AuditAction
from agent_service.audit.service import audit_entry
from agent_service.kit.client_ip import client_ip
from agent_service.kit.problems import internal_error
from agent_service.logging import get_logger
from agent_service.ops.metrics import route_template

_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
log = get_logger("agent_service.http")


def request_id_from(scope: Scope) -> str:
    key: bytes
    value: bytes
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("http.unhandled_error", path=scope.get("path"))
            if not response_started:
                await internal_error(scope)(scope, receive, send_wrapper)
        finally:
            _audit(scope, status)
            route = scope.get("route")
            http_metrics = getattr(getattr(scope.get("app"), "state", None), "http_metrics", None)
            if http_metrics is not None:
                http_metrics.observe(scope.get("method", ""), route_template(scope), status,
                                     time.perf_counter() - started)
            log.info(
                "http.request", method=scope.get("method"), path=scope.get("path"),
                route=getattr(route, "path", None), status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")


def _audit(scope: Scope, status: int) -> None:
    state = scope.get("state", {})
    requested = state.get("audit")
    if requested is None and status != 401:
        return
    action: AuditAction
    action, resource_type, resource_id, metadata = requested or ("FAILED_AUTH", "auth", None, {})
    if status == 401 or (action == "LOGIN" and status >= 400):
        action = "FAILED_AUTH"
    app = scope.get("app")
    deps = getattr(getattr(app, "state", None), "deps", None)
    if app is None or deps is None:
        return
    headers = dict(scope.get("headers", []))
    entry = audit_entry(
        action, resource_type, principal=getattr(scope.get("user"), "principal", None),
        resource_id=resource_id, request_id=state.get("request_id"), method=scope.get("method"),
        path=scope.get("path"), status=status, client_ip=client_ip(scope, getattr(app.state, "trusted_proxies", [])),
        user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:300] or None, metadata=metadata or {},
    )
    deps.record(entry)
