"""One OpenAPI operation from one route's EndpointSpec: parameters, body, answers, links, security."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from agent_service.kit.endpoint import Docs, EndpointSpec, Scoped
from agent_service.kit.openapi import streams
from agent_service.kit.openapi.components import REF, form_fields, query_parameters
from agent_service.kit.openapi.examples import example_for, problem_example
from agent_service.kit.schemas import Problem

RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
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
    431: "Headers too large",
    502: "Agent failed",
    503: "Unavailable",
    504: "Timed out",
}
# the web server refuses oversized request headers before any route runs (kit/http_guard.py)
ALWAYS = (431,)
HEADER_DOCS = {
    "Idempotency-Key": (
        "Makes the submission safe to retry for 24 h: the same key and body return the first answer.",
        r"^[\x21-\x7e]{1,255}$",
    ),
    # a Redis stream id, as tasks/follow.py checks it
    "Last-Event-ID": ("Resume the event stream after this event id (no loss, no duplicates).", r"^\d{1,20}-\d{1,20}$"),
}
PARAM_EXAMPLES = {
    "agent_id": "echo",
    "task_id": "9f1c2a7b3d4e4f5a8b6c7d8e9f0a1b2c",
    "key_id": "5d0c9b8a7f6e4d3c2b1a0f9e8d7c6b5a",
    "user_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "session_id": "chat-1",
    "log_id": "42",
    "name": "cleanup_temp_files",
}


def _ref(t: type) -> dict[str, str]:
    return {"$ref": REF.format(name=t.__name__)}


def _json(t: type) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(t), "examples": {"example": {"value": example_for(t)}}}}


def _header(description: str, kind: str = "integer") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


def security(scope: str | None) -> list[dict[str, list[str]]]:
    """Any one of the three schemes; the OAuth2 requirement names the scope it needs."""
    return [{"bearerAuth": []}, {"apiKeyAuth": []}, {"oauth2Password": [scope] if scope else []}]


def _parameters(path: str, docs: Docs) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "maxLength": 512},
         "description": f"The {name.replace('_', ' ')}.", "example": PARAM_EXAMPLES.get(name, "example")}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if docs.query is not None:
        params += query_parameters(docs.query)
    for h in docs.headers:
        description, pattern = HEADER_DOCS[h]
        params.append({"name": h, "in": "header", "required": False, "description": description,
                       "schema": {"type": "string", "pattern": pattern}})
    return params


def _success(spec: EndpointSpec) -> dict[str, Any]:
    docs = spec.docs
    headers: dict[str, Any] = {h: _header(f"{h} of this caller's bucket") for h in RATE_HEADERS} \
        if spec.limits is not None else {}
    if docs.status == 202 or (docs.response is not None and docs.status == 201):
        headers["Location"] = _header("URL of the created or queued resource", "string")
    ok: dict[str, Any] = {"description": docs.summary}
    if headers:
        ok["headers"] = headers
    if docs.events:
        ok["content"] = streams.media(docs.events)
    elif docs.media_types:
        ok["content"] = _files(docs)
    elif docs.response is not None:
        ok["content"] = _json(docs.response)
    elif docs.media_type == "application/json":  # a JSON document of no Struct (this very document)
        ok["content"] = {docs.media_type: {"schema": {"type": "object"},
                                           "examples": {"example": {"value": {"openapi": "3.1.0"}}}}}
    elif docs.media_type:
        ok["content"] = {docs.media_type: {"schema": {"type": "string"}, "examples": {"example": {"value": "…"}}}}
    if docs.links:
        ok["links"] = {link.name: {"operationId": link.operation, "parameters": dict(link.parameters),
                                   "description": link.description} for link in docs.links}
    return ok


def _files(docs: Docs) -> dict[str, Any]:
    """One entry per format. A JSON-lines body is described by one line (as a `text/event-stream`
    one is by one event: OpenAPI 3.1 has no item schema); any other format is text. Generated
    clients take the first type they know, text."""
    content: dict[str, Any] = {}
    for media in docs.media_types:
        if media.endswith(("ndjson", "jsonl")) and docs.response is not None:
            content[media] = {"schema": {**_ref(docs.response), "description": f"One line: a JSON "
                                         f"`{docs.response.__name__}`; the body is one per line."},
                              "examples": {"example": {"value": example_for(docs.response)}}}
        else:
            content[media] = {"schema": {"type": "string"}, "examples": {"example": {"value": "…"}}}
    return content


def _problem(code: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "description": TITLES.get(code, "Error"),
        "content": {"application/problem+json": {"schema": _ref(Problem),
                                                 "examples": {"example": {"value": problem_example(code)}}}},
    }
    if code == 429:
        entry["headers"] = {"Retry-After": _header("Seconds to wait"), **{h: _header(h) for h in RATE_HEADERS}}
    elif code == 503:
        entry["headers"] = {"Retry-After": _header("Seconds to wait")}
    return entry


def _responses(spec: EndpointSpec) -> dict[str, Any]:
    docs = spec.docs
    ok = _success(spec)
    responses: dict[str, Any] = {str(docs.status): ok}
    for extra in docs.also:
        extra_ok = {k: v for k, v in ok.items() if k != "links"}
        extra_ok["description"] = f"{docs.summary} ({HTTPStatus(extra).phrase})"
        if extra == 202:
            extra_ok["headers"] = {**ok.get("headers", {}), "Location": _header("URL to follow the resource at",
                                                                                 "string")}
        responses[str(extra)] = extra_ok
    errors = set(docs.errors) | set(ALWAYS)
    if isinstance(spec.auth, Scoped):  # 400: both credentials sent (conflicting_credentials)
        errors |= {400, 401, 403}
    if spec.limits is not None:
        errors.add(429)
    for code in sorted(errors):
        responses[str(code)] = _problem(code)
    return responses


def operation(path: str, spec: EndpointSpec, op_id: str) -> dict[str, Any]:
    docs = spec.docs
    scope = spec.auth.scope if isinstance(spec.auth, Scoped) else None
    description = docs.description + (f"\n\nRequires the `{scope}` scope." if scope else "")
    if docs.form is not None:
        # one content type per operation: generated clients break on a second one, and the form
        # is OAuth2's (RFC 6749 §4.3), described by the oauth2Password scheme whose tokenUrl this is
        description += ("\n\nAlso accepts the OAuth2 password-grant form (`application/x-www-form-urlencoded` "
                        f"with {', '.join(f'`{f}`' for f in form_fields(docs.form))}) that the "
                        "`oauth2Password` scheme (the docs' **Authorize** button) sends here.")
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": docs.summary,
        "description": description,
        "tags": [docs.tag],
        "parameters": _parameters(path, docs),
        "responses": _responses(spec),
        "security": security(scope) if isinstance(spec.auth, Scoped) else [],
    }
    if docs.request is not None:
        op["requestBody"] = {"required": docs.body_required, "content": _json(docs.request)}
    return op
