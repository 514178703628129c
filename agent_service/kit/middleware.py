"""Request context: X-Request-ID in and out, bound into every log line, one access line per request,
and a last-resort problem+json 500 that still carries the request id."""

from __future__ import annotations

import re
import time
import uuid
import weakref
from collections.abc import Callable, Sequence

import structlog
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Mount, Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.kit.problems import internal_error
from agent_service.logging import get_logger

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


UNMATCHED = "<unmatched>"
# called once per request with its scope and final status (the app wires the audit log here)
OnFinish = Callable[[Scope, int], None]


def route_template(scope: Scope) -> str:
    """The templated path incl. the mount prefix; never the raw path (bounded label values).

    A path that enters a Mount but matches nothing inside it leaves the Mount itself as
    `scope["route"]`: that is unmatched too, not "<prefix><prefix>". A request answered before
    routing (a 401 or 429 of the credential middleware) has no route in its scope: its template
    is looked up in the app's routes, so that it is counted where it was headed.
    """
    matched = scope.get("route")
    if matched is None:
        return _lookup(scope)
    path = getattr(matched, "path", None)
    if path is None or isinstance(matched, Mount):
        return UNMATCHED
    return f"{scope.get('root_path', '')}{path}"


# per app: every route's full template (mount prefixes joined), its compiled pattern and methods,
# built on the first request that needs them; a lookup is then one regex match per route
Templates = tuple[tuple[re.Pattern[str], str, frozenset[str] | None], ...]
_TEMPLATES: weakref.WeakKeyDictionary[object, Templates] = weakref.WeakKeyDictionary()


def _flatten(routes: Sequence[BaseRoute], prefix: str = "") -> Templates:
    found: list[tuple[re.Pattern[str], str, frozenset[str] | None]] = []
    for r in routes:
        if isinstance(r, Mount):
            found += _flatten(r.routes, prefix + r.path)
        elif isinstance(r, Route):
            found.append((compile_path(prefix + r.path)[0], prefix + r.path,
                          frozenset(r.methods) if r.methods else None))
    return tuple(found)


def _lookup(scope: Scope) -> str:
    """The route the router would pick: the first whose path and method match, else the first
    whose path matches (a 405 there); unmatched when no path matches."""
    app = scope.get("app")
    routes = getattr(app, "routes", None)
    if app is None or routes is None:
        return UNMATCHED
    table = _TEMPLATES.get(app)
    if table is None:
        table = _TEMPLATES[app] = _flatten(routes)
    root: str = scope.get("root_path", "")
    path: str = scope.get("path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    method = scope.get("method", "")
    partial = None
    for pattern, template, methods in table:
        if pattern.match(path):
            if methods is None or method in methods:
                return f"{root}{template}"
            partial = partial or template
    return UNMATCHED if partial is None else f"{root}{partial}"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, on_finish: Sequence[OnFinish] = ()) -> None:
        self.app = app
        self._on_finish = tuple(on_finish)

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
        except Exception:  # the last resort: a bug must still answer problem+json with the request id
            log.exception("http.unhandled_error", path=scope.get("path"))
            if not response_started:
                await internal_error(scope)(scope, receive, send_wrapper)
        finally:
            for hook in self._on_finish:
                hook(scope, status)
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
