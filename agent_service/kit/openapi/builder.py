"""The OpenAPI 3.1 document, built once with apispec from the routes and their msgspec Structs.

Operations come from the Starlette route table (each route's typed `EndpointSpec`, the same
object that enforces its auth and limits), component schemas from
`msgspec.json.schema_components` over the same Structs that validate requests, so the document
cannot drift from the code. Examples come from kit/openapi/examples.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import msgspec
from apispec import APISpec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from agent_service.kit import context
from agent_service.kit.endpoint import Docs, EndpointSpec, Public, endpoint, spec_of
from agent_service.kit.openapi import components, streams
from agent_service.kit.openapi.operations import operation
from agent_service.kit.openapi.texts import DESCRIPTION, SCOPES, TAGS
from agent_service.kit.schemas import Problem

TOKEN_URL = "/api/v1/auth/token"
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    # the docs' Authorize button posts the password form to tokenUrl, which accepts it besides JSON
    "oauth2Password": {"type": "oauth2", "flows": {"password": {"tokenUrl": TOKEN_URL, "scopes": SCOPES}}},
}


def _version() -> str:
    try:
        return metadata.version("agent-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, EndpointSpec]]:
    """(path, method, spec) for every routed operation, mounts included."""
    for r, path in _routes(routes, prefix):
        spec = getattr(r, "spec", None) or spec_of(r.endpoint)
        for method in sorted((r.methods or set()) - {"HEAD"}):
            yield path, method.lower(), spec


def _routes(routes: list[BaseRoute], prefix: str) -> Iterator[tuple[Route, str]]:
    for r in routes:
        if isinstance(r, Mount):
            yield from _routes(list(r.routes), prefix + r.path)
        elif isinstance(r, Route):
            yield r, prefix + r.path


def documented(routes: list[BaseRoute]) -> Iterator[tuple[str, str, EndpointSpec]]:
    """The operations of the document: API routes only, none at a path its endpoint moved from."""
    for r, path in _routes(routes, ""):
        spec = getattr(r, "spec", None) or spec_of(r.endpoint)
        if spec.docs.in_api and r.path not in spec.docs.moved_from:
            for method in sorted((r.methods or set()) - {"HEAD"}):
                yield path, method.lower(), spec


def _component_types(operations: list[tuple[str, str, EndpointSpec]]) -> list[type]:
    seen: dict[str, type] = {"Problem": Problem}
    for _, _, spec in operations:
        docs = spec.docs
        for t in (docs.request, docs.response, *docs.events):
            if t is not None:
                seen[t.__name__] = t
    return list(seen.values())


def _schemas(operations: list[tuple[str, str, EndpointSpec]]) -> dict[str, dict[str, Any]]:
    """The Structs' schemas, and one `Sse<Event>` per event type a stream carries."""
    found = components.schemas(_component_types(operations))
    for _, _, spec in operations:
        for event in spec.docs.events:
            found[streams.component_name(event)] = streams.event_schema(event)
    return found


def _check_links(paths: dict[str, dict[str, Any]]) -> None:
    """A link to an operation that is not in the document is a bug of the Docs that declare it."""
    ids = {op["operationId"] for ops in paths.values() for op in ops.values()}
    for path, ops in paths.items():
        for op in ops.values():
            for resp in op["responses"].values():
                for name, link in resp.get("links", {}).items():
                    if link["operationId"] not in ids:
                        raise RuntimeError(f"{path}: link {name} targets unknown operation {link['operationId']}")


def build_spec(routes: list[BaseRoute], *, server_url: str | None = None) -> dict[str, Any]:
    """The document for every API route under `routes`, served from `server_url` (default: this host)."""
    operations = list(documented(routes))
    used: set[str] = set()
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op_spec in operations:
        op_id = op_spec.operation_id
        if op_id in used:  # one function behind two paths (the default agent and a named one)
            op_id += "_" + "_".join(re.findall(r"{(\w+)}", path) or ["default"])
        used.add(op_id)
        paths.setdefault(path, {})[method] = operation(path, op_spec, op_id)
    _check_links(paths)
    # apispec assembles the document (and checks each component and path as it is added); the
    # operation and schema dictionaries it is given are ours, built from the EndpointSpecs
    spec = APISpec(
        title="Agent Service", version=_version(), openapi_version="3.1.0",
        info={"description": DESCRIPTION, "contact": {"name": "agent-service maintainers"},
              "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}},
        servers=[{"url": (server_url or "").rstrip("/") or "/", "description": "This service"}],
        tags=TAGS,
    )
    for name, schema in sorted(_schemas(operations).items()):
        spec.components.schema(name, schema)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    for path, ops in paths.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


@endpoint(auth=Public(), docs=Docs(
    summary="OpenAPI document", tag="Health", media_type="application/json",
    description="This API's OpenAPI 3.1 description, generated from the code at start-up."))
async def openapi_json(request: Request) -> Response:
    cached: bytes | None = getattr(request.app.state, "openapi_bytes", None)
    if cached is None:
        base = context.deps(request).settings.public_base_url
        cached = msgspec.json.encode(build_spec(list(request.app.routes), server_url=base))
        request.app.state.openapi_bytes = cached
    return Response(cached, media_type="application/json")


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
