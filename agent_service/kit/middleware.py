"""Request context: X-Request-ID in and out, bound into every log line, one access line per request,
and a last-resort problem+json 500 that still carries the request id."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence

import structlog
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.kit import ids, route_table
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
    return ids.time_ordered()


_OWN_HEADERS = frozenset({b"x-request-id"})
_PRIVATE_HEADERS = frozenset({b"x-request-id", b"cache-control"})
UNMATCHED = "<unmatched>"
PRIVATE_PREFIX = "/api/"
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
        return route_table.template_for(scope) or UNMATCHED
    path = getattr(matched, "path", None)
    if path is None or isinstance(matched, Mount):
        return UNMATCHED
    return f"{scope.get('root_path', '')}{path}"


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
        private = scope.get("path", "").startswith(PRIVATE_PREFIX)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                # set, not added: one the answer had already is replaced (edited as the raw list,
                # cheaper than MutableHeaders' rescans)
                ours = _PRIVATE_HEADERS if private else _OWN_HEADERS
                raw = [h for h in message.get("headers", ()) if h[0].lower() not in ours]
                raw.append((b"x-request-id", request_id.encode("latin-1")))
                if private:
                    # every API answer is someone's (and a refusal names their request): no shared
                    # cache may keep it, whichever layer answered (auth, limits, endpoint, stream)
                    raw.append((b"cache-control", b"no-store"))
                message["headers"] = raw
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
            structlog.contextvars.unbind_contextvars("request_id", "task_id")  # task_id: bound by a submission
