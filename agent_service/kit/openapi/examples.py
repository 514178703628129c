"""Examples for the OpenAPI document, generated from each Struct's JSON schema.

Field names with a shape of their own (emails, ids, keys) get realistic values; everything else
follows its schema (enums, bounds, formats). A test validates every example against its schema.
"""

from __future__ import annotations

from typing import Any

from agent_service.kit.openapi.components import schemas
from agent_service.kit.problems import TYPE_BASE

HEX = "9f1c2a7b3d4e4f5a8b6c7d8e9f0a1b2c"
NAMED: dict[str, Any] = {
    "email": "ada@example.com", "password": "correct horse battery", "message": "Hello, agent!",
    "session_id": "chat-1", "task_id": HEX, "id": HEX, "user_id": HEX, "api_key_id": None,
    "actor_user_id": HEX, "key": "sk_live_" + "A" * 43, "prefix": "sk_live_AAAA", "agent_id": "echo",
    "agent": "echo", "default_agent": "echo", "name": "ci", "status_url": f"/api/v1/agents/tasks/{HEX}",
    "access_token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2ln", "refresh_token": "rt_" + "B" * 43,
    "refresh_token_opt": None, "content": "Hello, agent!", "detail": "Details.", "request_id": HEX,
    "cursor": None, "next_cursor": None, "worker_id": "host-123-abc", "host": "host", "title": "Hello, agent!",
    "actor": f"user:{HEX}", "client_ip": "203.0.113.7", "user_agent": "curl/8.5.0", "path": "/api/v1/agents",
    "method": "POST", "resource_type": "agent", "resource_id": "echo", "description": "An agent.",
}
DATETIME = "2026-11-25T12:00:00Z"


def _allows_string(schema: dict[str, Any]) -> bool:
    if schema.get("type") == "string" or "enum" in schema:
        return "enum" not in schema
    return any(_allows_string(s) for s in schema.get("anyOf", []))


def _gen(schema: dict[str, Any], defs: dict[str, Any], name: str | None) -> Any:
    if "$ref" in schema:
        target = schema["$ref"].rsplit("/", 1)[1]
        return _gen(defs[target], defs, name) if target in defs else None
    if name in NAMED and NAMED[name] is not None and _allows_string(schema):
        return NAMED[name]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null" and "$ref" not in s]
        return _gen(options[0], defs, name) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _gen(v, defs, k) for k, v in props.items()}
    if kind == "array":
        item = _gen(schema.get("items", {}), defs, None)
        return [item] * max(1, schema.get("minItems", 1))
    if kind == "string":
        if schema.get("format") == "date-time":
            return DATETIME
        return "x" * max(1, schema.get("minLength", 7)) if schema.get("minLength", 0) > 7 else "example"
    if kind == "integer":
        return max(schema.get("minimum", 1), min(schema.get("maximum", 1), 1)) if "maximum" in schema \
            else max(schema.get("minimum", 1), 1)
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return False
    return None


def example_for(t: type) -> Any:
    """An example of `t` that its documented schema (timestamps formatted) accepts."""
    return _gen({"$ref": f"#/$defs/{t.__name__}"}, schemas([t], "#/$defs/{name}"), None)


def problem_example(status: int) -> dict[str, Any]:
    code = {400: "malformed_json", 401: "unauthorized", 403: "insufficient_scope", 404: "not_found",
            409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
            429: "rate_limited", 431: "header_fields_too_large",
            502: "agent_error", 503: "service_unavailable", 504: "timeout"}.get(status, "error")
    body: dict[str, Any] = {"type": TYPE_BASE + code, "title": code.replace("_", " ").capitalize(), "status": status,
                            "detail": "What went wrong, in words.", "instance": "/api/v1/agents/echo/invoke",
                            "request_id": HEX, "code": code}
    if status == 422:
        body["errors"] = [{"path": "$.message", "message": "Expected `str` of length >= 1"}]
    return body
