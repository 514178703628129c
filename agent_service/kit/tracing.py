"""Traces to an OpenTelemetry collector, when OTEL_EXPORTER_OTLP_ENDPOINT is set: one trace from an
HTTP request through the enqueue and the job's run to the agent's provider call.

- web: a SERVER span per request (`ServerSpanMiddleware`, named `METHOD /route/{template}`; the
  caller's W3C `traceparent` is continued);
- enqueue: a PRODUCER span (`traced`), whose context the job carries as a W3C traceparent string
  (`traceparent()` → `AgentJob.traceparent`);
- worker: a CONSUMER span per run (`job_span`), child of that context;
- agent: a CLIENT span around the provider's HTTP request (`client_span`).

Spans carry no query strings, no headers, no bodies, no prompts, and no exception messages (the
type only: messages of user agents may quote user data). Unset, `opentelemetry` is never imported:
the middleware is not installed, and every other hook costs a check of one module global.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib import metadata
from typing import Any, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_service.config import Settings
from agent_service.errors import ConfigError
from agent_service.kit.middleware import UNMATCHED, route_template

P = ParamSpec("P")
R = TypeVar("R")
Kind = Literal["internal", "server", "client", "producer", "consumer"]
UNTRACED_PATHS = ("/health", "/metrics")  # probes and scrapes: every few seconds, nothing to follow
ATTR_PREFIX = "agent_service."

_otel: dict[str, Any] = {}  # "tracer", "provider", "trace" (the API module), "propagator" while on


def enabled() -> bool:
    return bool(_otel)


def setup(settings: Settings, *, process: str) -> bool:
    """Start tracing if OTEL_EXPORTER_OTLP_ENDPOINT is set; True if it did."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return False
    if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname:
        raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL (e.g. http://collector:4318)")
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
                          "(pip install 'agent-service[observability]')") from None
    version = package_version()
    resource = Resource.create({"service.name": settings.otel_service_name, "service.version": version,
                                "deployment.environment.name": settings.app_env, ATTR_PREFIX + "process": process})
    provider = TracerProvider(resource=resource)
    # the standard variable names a base URL; the signal's path is appended, as the SDK does itself
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # user agents' own spans join ours (settable once per process)
    _otel.update(tracer=provider.get_tracer("agent_service", version), provider=provider, trace=trace,
                 propagator=TraceContextTextMapPropagator())
    return True


def package_version() -> str:
    try:
        return metadata.version("agent-service")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def shutdown() -> None:
    """Export what is buffered and stop (web lifespan end, worker shutdown)."""
    provider = _otel.get("provider")
    _otel.clear()
    if provider is not None:
        provider.shutdown()


def middleware() -> list[Middleware]:
    """The server-span middleware while tracing is on; nothing otherwise (no per-request cost)."""
    return [Middleware(ServerSpanMiddleware)] if _otel else []


def traceparent() -> str | None:
    """The current span's context as a W3C traceparent, for a job to carry; None when off."""
    if not _otel:
        return None
    carrier: dict[str, str] = {}
    _otel["propagator"].inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), for an error report to point at; None when off."""
    if not _otel:
        return None
    context = _otel["trace"].get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def annotate(**attributes: str | int | None) -> None:
    """Set attributes on the current span (prefixed `agent_service.`)."""
    if not _otel:
        return
    span = _otel["trace"].get_current_span()
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(ATTR_PREFIX + key, value)


def traced(name: str, kind: Kind = "internal") -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async function inside a span (the current one while it runs)."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _otel:
                return await fn(*args, **kwargs)
            with _current_span(name, kind, None, {}):
                return await fn(*args, **kwargs)

        return run

    return wrap


class _NoSpan:
    """What the span hooks give while tracing is off: accepts attributes, records nothing."""

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def job_span(name: str, parent: str | None, **attributes: str | int | None) -> AbstractContextManager[Any]:
    """A CONSUMER span around a job's run, child of the traceparent the job carried (a new trace
    without one: a job queued before tracing, or by a process without it)."""
    if not _otel:
        return _NO_SPAN
    return _current_span(name, "consumer", parent, attributes)


def client_span(name: str, **attributes: str | int | None) -> AbstractContextManager[Any]:
    """A CLIENT span around an outgoing call; not made current (a leaf: nothing runs inside it)."""
    if not _otel:
        return _NO_SPAN
    return _leaf_span(name, attributes)


class _Span:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        if value is None:
            return
        self._span.set_attribute(key, value)
        if key == "http.response.status_code" and isinstance(value, int) and value >= 400:
            _error(self._span)  # a client span's 4xx and 5xx are failures (semantic conventions)


def _kind(kind: Kind) -> Any:
    return getattr(_otel["trace"].SpanKind, kind.upper())


def _attrs(attributes: dict[str, str | int | None]) -> dict[str, str | int]:
    return {k if "." in k else ATTR_PREFIX + k: v for k, v in attributes.items() if v is not None}


def _fail(span: Any, exc: BaseException) -> None:
    name = type(exc).__qualname__
    span.add_event("exception", {"exception.type": f"{type(exc).__module__}.{name}"})
    _error(span, name)


def _error(span: Any, description: str | None = None) -> None:
    api = _otel["trace"]
    span.set_status(api.Status(api.StatusCode.ERROR, description))


@contextmanager
def _current_span(name: str, kind: Kind, parent: str | None, attributes: dict[str, str | int | None]) -> Iterator[Any]:
    context = _otel["propagator"].extract({"traceparent": parent}) if parent else None
    with _otel["tracer"].start_as_current_span(name, context=context, kind=_kind(kind), attributes=_attrs(attributes),
                                               record_exception=False, set_status_on_exception=False) as span:
        try:
            yield _Span(span)
        except Exception as exc:  # a cancellation is no failure of the span's work
            _fail(span, exc)
            raise


@contextmanager
def _leaf_span(name: str, attributes: dict[str, str | int | None]) -> Iterator[Any]:
    span = _otel["tracer"].start_span(name, kind=_kind("client"), attributes=_attrs(attributes))
    try:
        yield _Span(span)
    except Exception as exc:  # broad: the span records whatever failed, then it is re-raised
        _fail(span, exc)
        raise
    finally:
        span.end()


class ServerSpanMiddleware:
    """A SERVER span per HTTP request: named after the route template once routing has matched it,
    with method, path (no query string), status and request id; no headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _otel or scope.get("path", "").startswith(UNTRACED_PATHS):
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])
                   if k in (b"traceparent", b"tracestate")}
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method, "url.path": scope.get("path", ""),
                      "url.scheme": scope.get("scheme", "http")}
        context = _otel["propagator"].extract(carrier) if carrier else None
        with _otel["tracer"].start_as_current_span(method, context=context, kind=_kind("server"), attributes=attributes,
                                                   record_exception=False, set_status_on_exception=False) as span:
            try:
                await self.app(scope, receive, send_status)
            except Exception as exc:  # broad: recorded on the request's span, then re-raised
                _fail(span, exc)
                raise
            finally:
                route = route_template(scope)
                if route != UNMATCHED:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                request_id = scope.get("state", {}).get("request_id")
                if request_id:
                    span.set_attribute(ATTR_PREFIX + "request_id", request_id)
                if status >= 500:
                    _error(span)
