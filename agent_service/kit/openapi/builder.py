"""The OpenAPI 3.1 document, built once with apispec from the routes and their msgspec Structs.

Operations come from the Starlette route table (each route's typed `EndpointSpec`, the same
object that enforces its auth and limits), component schemas from
`msgspec.json.schema_components` over the same Structs that validate requests, so the document
cannot drift from the code. Examples come from kit/openapi/examples.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http import HTTPStatus
from importlib import metadata
from typing import Any

import msgspec
from apispec import APISpec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from agent_service.kit.endpoint import Docs, EndpointSpec, Public, Scoped, endpoint, spec_of
from agent_service.kit.openapi.examples import example_for, problem_example
from agent_service.kit.openapi.texts import DESCRIPTION, TAGS
from agent_service.kit.schemas import Problem

REF = "#/components/schemas/{name}"
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}, {"oauth2Password": []}]
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
# one Server-Sent Event (a stream is a sequence of them); `data` holds a JSON document
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "id": {"type": "string"}, "data": {"type": "string"},
                   "retry": {"type": "integer"}},
}
TITLES = {
    400: "Malformed request",
    401: "Not authenticated",
    403: "Missing scope",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    415: "Not JSON",
    422: "Invalid input",
    429: "Rate limited",
    502: "Agent failed",
    503: "Unavailable",
    504: "Timed out",
}


def _version() -> str:
    try:
        return metadata.version("agent-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, EndpointSpec]]:
    """(path, method, spec) for every routed operation, mounts included."""
    for r in routes:
        if isinstance(r, Mount):
            yield from walk(list(r.routes), prefix + r.path)
        elif isinstance(r, Route):
            spec = getattr(r, "spec", None) or spec_of(r.endpoint)
            for method in sorted((r.methods or set()) - {"HEAD"}):
                yield prefix + r.path, method.lower(), spec


def _struct_types(routes: list[BaseRoute]) -> list[type]:
    seen: dict[str, type] = {"Problem": Problem}
    for _, _, spec in walk(routes):
        docs = spec.docs
        for t in (docs.request, docs.response, docs.query, *docs.events):
            if t is not None:
                seen[t.__name__] = t
    return list(seen.values())


def _ref(t: type) -> dict[str, str]:
    return {"$ref": REF.format(name=t.__name__)}


def _json(t: type, example: Any) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(t), "examples": {"example": {"value": example}}}}


def _header(description: str, kind: str = "integer") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


def _parameters(path: str, docs: Docs, components: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "maxLength": 512},
            "description": f"The {name.replace('_', ' ')}.",
            "example": example_for_param(name),
        }
        for name in re.findall(r"{(\w+)}", path)
    ]
    q = docs.query
    if q is not None:
        schema = components[q.__name__]
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            params.append(
                {
        "name": name,
        "in": "query",
        "required": name in required,
        "schema": _nullable_stripped(prop),
        "description": prop.get("description", name),
                }
            )
    for h in docs.headers:
        description, pattern = HEADER_DOCS[h]
        params.append({"name": h, "in": "header", "required": False, "description": description,
        "schema": {"type": "string", "pattern": pattern}})
    return params


HEADER_DOCS = {
    "Idempotency-Key": (
        "Makes the submission safe to retry for 24 h: the same key and body return the first answer.",
        r"^[\x21-\x7e]{1,255}$",
    ),
    "Last-Event-ID": ("Resume the event stream after this event id (no loss, no duplicates).", r"^\d{1,20}-\d{1,20}$"),
}


def example_for_param(name: str) -> str:
    return {
        "agent_id": "echo",
        "task_id": "9f1c2a7b3d4e4f5a8b6c7d8e9f0a1b2c",
        "key_id": "5d0c9b8a7f6e4d3c2b1a0f9e8d7c6b5a",
        "user_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "session_id": "chat-1",
        "log_id": "42",
        "name": "cleanup_temp_files",
    }.get(name, "example")


def _nullable_stripped(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is simply absent when unset: document the non-null alternative."""
    alts = prop.get("anyOf")
    if alts:
        non_null = [a for a in alts if a.get("type") != "null"]
        if len(non_null) == 1:
            rest = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
            return {**rest, **non_null[0]}
    return prop


def _responses(spec: EndpointSpec) -> dict[str, Any]:
    docs = spec.docs
    secured = isinstance(spec.auth, Scoped)
    limited = spec.limits is not None
    headers: dict[str, Any] = {h: _header(f"{h} of this caller's bucket") for h in RATE_HEADERS} if limited else {}
    if docs.status == 202 or (docs.response is not None and docs.status == 201):
        headers["Location"] = _header("URL of the created or queued resource", "string")
    ok: dict[str, Any] = {"description": docs.summary}
    if headers:
        ok["headers"] = headers
    if docs.events:
        ok["content"] = {
            "text/event-stream": {
                "schema": SSE_EVENT,
                "examples": {"example": {"value": {"event": "chunk", "id": "0",
        "data": '{"index":0,"content":"Hello "}'}}},
            }
        }
    elif docs.response is not None:
        ok["content"] = _json(docs.response, example_for(docs.response))
    elif docs.media_type:
        ok["content"] = {docs.media_type: {"schema": {"type": "string"}, "examples": {"example": {"value": "…"}}}}
    responses: dict[str, Any] = {str(docs.status): ok}
    for extra in docs.also:
        extra_headers = {**headers, "Location": _header("URL to follow the resource at", "string")} \
            if extra == 202 else headers
        responses[str(extra)] = {**ok, "description": f"{docs.summary} ({HTTPStatus(extra).phrase})",
                                 **({"headers": extra_headers} if extra_headers else {})}
    errors = set(docs.errors)
    if secured:
        errors |= {401, 403}
    if limited:
        errors.add(429)
    for code in sorted(errors):
        entry: dict[str, Any] = {
            "description": TITLES.get(code, "Error"),
            "content": {
                "application/problem+json": {
        "schema": _ref(Problem),
        "examples": {"example": {"value": problem_example(code)}},
                }
            },
        }
        if code == 429:
            entry["headers"] = {"Retry-After": _header("Seconds to wait"), **{h: _header(h) for h in RATE_HEADERS}}
        elif code == 503:
            entry["headers"] = {"Retry-After": _header("Seconds to wait")}
        responses[str(code)] = entry
    return responses


def _form_schema(form: type) -> dict[str, Any]:
    _, components = msgspec.json.schema_components([form], ref_template=REF)
    schema: dict[str, Any] = components[form.__name__]
    return schema


def _operation(path: str, spec: EndpointSpec, used_ids: set[str], components: dict[str, Any]) -> dict[str, Any]:
    docs = spec.docs
    secured = isinstance(spec.auth, Scoped)
    op_id = spec.operation_id
    if op_id in used_ids:  # one function behind two paths (the default agent and a named one)
        op_id += "_" + "_".join(re.findall(r"{(\w+)}", path) or ["default"])
    used_ids.add(op_id)
    scope = spec.auth.scope if isinstance(spec.auth, Scoped) else None
    description = docs.description + (f"\n\nRequires the `{scope}` scope." if scope else "")
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": docs.summary,
        "description": description,
        "tags": [docs.tag],
        "parameters": _parameters(path, docs, components),
        "responses": _responses(spec),
        "security": SECURITY if secured else [],
    }
    if docs.request is not None:
        body = _json(docs.request, example_for(docs.request))
        if docs.form is not None:
            body["application/x-www-form-urlencoded"] = {"schema": _form_schema(docs.form)}
        op["requestBody"] = {"required": docs.body_required, "content": body}
    return op


def build_spec(routes: list[BaseRoute]) -> dict[str, Any]:
    """The document for every route under `routes` that carries an endpoint spec."""
    spec = APISpec(
        title="Agent Service",
        version=_version(),
        openapi_version="3.1.0",
        info={
            "description": DESCRIPTION,
            "contact": {"name": "agent-service maintainers"},
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        tags=TAGS,
    )
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    spec.components.security_scheme("apiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    spec.components.security_scheme(
        "oauth2Password", {"type": "oauth2", "flows": {"password": {"tokenUrl": "/api/v1/auth/token", "scopes": {}}}}
    )
    _, components = msgspec.json.schema_components(_struct_types(routes), ref_template=REF)
    for name, schema in sorted(components.items()):
        spec.components.schema(name, schema)
    used: set[str] = set()
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op_spec in walk(routes):
        paths.setdefault(path, {})[method] = _operation(path, op_spec, used, components)
    for path, ops in paths.items():
        spec.path(path=path, operations=ops)
    return spec.to_dict()


@endpoint(auth=Public(), docs=Docs(
    summary="OpenAPI document", tag="Health", media_type="application/json",
    description="This API's OpenAPI 3.1 description, generated from the code at start-up."))
async def openapi_json(request: Request) -> Response:
    cached: bytes | None = getattr(request.app.state, "openapi_bytes", None)
    if cached is None:
        cached = msgspec.json.encode(build_spec(list(request.app.routes)))
        request.app.state.openapi_bytes = cached
    return Response(cached, media_type="application/json")


routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
