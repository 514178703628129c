"""Typed endpoint specs: one frozen object per operation says who may call it, how it is limited
and how it is documented. `route()` enforces the first two; the OpenAPI builder reads the same
object, so the document cannot disagree with what the route does.

    @endpoint(auth=Scoped("tasks:read"), docs=Docs(summary="Get a task", tag="Background Jobs", …))
    async def get_task(request: Request) -> Response: …

Every part is a msgspec Struct with keyword-only fields: a misspelt key is a TypeError at import
(and a mypy error), never a silently ignored option.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, TypeVar

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from agent_service.errors import AppError, Forbidden, Unauthorized

Endpoint = Callable[[Request], Awaitable[Response]]
F = TypeVar("F", bound=Endpoint)
WWW_AUTHENTICATE = 'Bearer realm="agent-service", ApiKey header="X-API-Key"'
LimitKind = Literal["api", "stream", "login"]


class Caller(Protocol):
    """What the route layer needs to know of an authenticated caller (identity's Principal)."""

    @property
    def user_id(self) -> str: ...

    @property
    def tier(self) -> str: ...

    @property
    def api_key_id(self) -> str | None: ...

    @property
    def is_admin(self) -> bool: ...

    def has_scope(self, scope: str) -> bool: ...


class Public(msgspec.Struct, frozen=True, kw_only=True):
    """No credential needed; any credential sent is ignored."""


class Scoped(msgspec.Struct, frozen=True):
    """An authenticated caller holding `scope` (any authenticated caller when None)."""

    scope: str | None = None


Auth = Public | Scoped


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """`api`: per caller and tier; `stream`: the tighter stream budget; `login`: per client IP.
    `local_fallback`: with Redis down, limit in process memory instead of failing closed."""

    kind: LimitKind = "api"
    local_fallback: bool = False


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """Where a client can go next with a value of this answer (an OpenAPI link on the success response)."""

    name: str
    operation: str  # the target's operation id: its function name (with the path's suffix when shared)
    parameters: dict[str, str]  # target parameter -> runtime expression, e.g. "$response.body#/task_id"
    description: str


class Docs(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    description: str
    tag: str
    request: type | None = None
    response: type | None = None
    query: type | None = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses with the same body (e.g. 202 while stopping)
    errors: tuple[int, ...] = ()
    # Server-Sent Events: the Struct types of the events the stream carries
    events: tuple[type, ...] = ()
    media_type: str | None = None  # a non-JSON success body (HTML, text)
    # a file in one of several formats (an export, picked by a query parameter): a JSON-lines type
    # documents one line as `response`, any other is text
    media_types: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()  # documented request headers (see the builder's HEADER_DOCS)
    body_required: bool = True
    form: type | None = None  # an alternative application/x-www-form-urlencoded body
    in_api: bool = True  # False: a page or asset, kept out of the API operations
    links: tuple[Link, ...] = ()
    # older paths (as routed, relative to their mount) still served for existing clients and left
    # out of the document: a path that moved, e.g. to stop being ambiguous with another one
    moved_from: tuple[str, ...] = ()


class EndpointSpec(msgspec.Struct, frozen=True, kw_only=True):
    auth: Public | Scoped
    limits: Limits | None
    docs: Docs
    operation_id: str


def endpoint(*, auth: Public | Scoped, docs: Docs, limits: Limits | Literal["default"] | None = "default") -> Callable[
        [F], F]:
    """Attach the spec. `limits` defaults to the `api` budget for authenticated operations and to
    none for public ones."""

    def mark(fn: F) -> F:
        chosen = (None if isinstance(auth, Public) else Limits()) if limits == "default" else limits
        fn.__spec__ = EndpointSpec(auth=auth, limits=chosen, docs=docs,  # type: ignore[attr-defined]
                                   operation_id=fn.__name__)
        return fn

    return mark


def spec_of(fn: object) -> EndpointSpec:
    spec = getattr(fn, "__spec__", None)
    if not isinstance(spec, EndpointSpec):
        raise RuntimeError(f"endpoint {getattr(fn, '__name__', fn)!r} has no @endpoint(...) spec")
    return spec


# Set by the app: charges the limit and returns the RateLimit-* headers (raises 429/503).
LimitCheck = Callable[[Request, Limits, Caller | None], Awaitable[dict[str, str]]]


def caller_of(request: HTTPConnection) -> Caller | None:
    principal: Caller | None = getattr(request.scope.get("user"), "principal", None)
    return principal


def _guarded(endpoint_fn: Endpoint, spec: EndpointSpec) -> Endpoint:
    if isinstance(spec.auth, Public) and spec.limits is None:
        return endpoint_fn
    scope = spec.auth.scope if isinstance(spec.auth, Scoped) else None

    @functools.wraps(endpoint_fn)
    async def wrapper(request: Request) -> Response:
        caller = caller_of(request)
        if isinstance(spec.auth, Scoped):
            if caller is None:
                await request.app.state.on_auth_failure(request.scope)  # may raise 429 instead
                raise Unauthorized("Authentication required: send a bearer token or an X-API-Key.",
                                   headers={"WWW-Authenticate": WWW_AUTHENTICATE})
            if scope and not caller.has_scope(scope):
                raise Forbidden(f"This operation needs the `{scope}` scope.", code="insufficient_scope")
        limit_headers: dict[str, str] = {}
        if spec.limits is not None:
            check: LimitCheck = request.app.state.limit_check
            limit_headers = await check(request, spec.limits, caller)
        try:
            response = await endpoint_fn(request)
        except AppError as exc:
            exc.headers = {**limit_headers, **exc.headers}
            raise
        if limit_headers:
            # appended to the raw list: setting them one by one through `response.headers` rescans
            # every header each time; one the endpoint set itself is kept
            raw = response.raw_headers
            present = {k for k, _ in raw}
            raw += [(k, v.encode("latin-1")) for name, v in limit_headers.items()
                    if (k := name.lower().encode("latin-1")) not in present]
        return response

    return wrapper


def route(path: str, endpoint_fn: Endpoint, methods: list[str]) -> Route:
    spec = spec_of(endpoint_fn)
    r = Route(path, _guarded(endpoint_fn, spec), methods=methods)
    r.spec = spec  # type: ignore[attr-defined]  # read by the OpenAPI builder and the auth backend
    return r
