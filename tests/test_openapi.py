"""The OpenAPI document: valid 3.1, matches the route table both ways, examples match schemas."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from agent_service.kit.endpoint import Public, Scoped
from agent_service.kit.openapi.builder import walk
from tests.support.apps import Client, add_user

pytestmark = pytest.mark.sqlite_only  # the document and the docs pages: no SQL of their own

TAG_ORDER = ["Health", "Authentication", "Agents", "Background Jobs", "Sessions", "API Keys", "Audit Logs", "Admin"]


@pytest.fixture
async def spec(client: Client) -> dict[str, Any]:
    resp = await client.get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    return resp.json()  # type: ignore[no-any-return]


async def test_document_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"] == "3.1.0" and spec["info"]["title"] == "Agent Service"
    assert spec["info"]["license"]["name"] == "Apache-2.0" and spec["info"]["license"]["url"]
    assert "Getting started" in spec["info"]["description"]
    assert [t["name"] for t in spec["tags"]] == TAG_ORDER and all(t["description"] for t in spec["tags"])
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["oauth2Password"]["flows"]["password"]["tokenUrl"] == "/api/v1/auth/token"


async def test_every_route_is_documented_and_every_documented_path_is_routed(client: Client,
                                                                            spec: dict[str, Any]) -> None:
    routed = {(path, method) for path, method, _ in walk(list(client.app.routes))}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routed - documented == set(), f"routed but not documented: {sorted(routed - documented)}"
    assert documented - routed == set(), f"documented but not routed: {sorted(documented - routed)}"


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, ops in spec["paths"].items() for m, op in ops.items()]


async def test_every_operation_is_complete(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in _operations(spec)]
    assert len(ids) == len(set(ids))
    for path, method, op in _operations(spec):
        where = f"{method.upper()} {path}"
        assert op["summary"] and op["description"] and len(op["tags"]) == 1 and op["tags"][0] in TAG_ORDER, where
        assert op["responses"], where
        for name in re.findall(r"{(\w+)}", path):
            assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"]), where
        public = op["security"] == []
        if not public:
            assert {"401", "403"} <= set(op["responses"]), where
        for code, resp in op["responses"].items():
            if code.startswith(("4", "5")):
                assert "application/problem+json" in resp["content"], (where, code)
            if code == "202":
                assert "Location" in resp["headers"], where
            if code == "429":
                assert "Retry-After" in resp["headers"], where
            for media in resp.get("content", {}).values():
                assert media.get("examples"), (where, code)


async def test_public_operations_and_streams(spec: dict[str, Any]) -> None:
    public = {(p, m) for p, m, op in _operations(spec) if op["security"] == []}
    assert ("/health/live", "get") in public and ("/openapi.json", "get") in public
    assert ("/api/v1/auth/token", "post") in public and ("/api/v1/agents/invoke", "post") not in public
    stream = spec["paths"]["/api/v1/agents/{agent_id}/stream"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in stream
    limited = spec["paths"]["/api/v1/agents/{agent_id}/invoke"]["post"]["responses"]
    assert "RateLimit-Remaining" in limited["200"]["headers"] and "429" in limited


async def test_each_operation_matches_its_route_metadata(client: Client, spec: dict[str, Any]) -> None:
    """Public-ness, schemes, scope, bodies and streams as declared by each route's typed EndpointSpec."""
    for path, method, endpoint_spec in walk(list(client.app.routes)):
        docs, op, where = endpoint_spec.docs, spec["paths"][path][method], f"{method.upper()} {path}"
        scope = endpoint_spec.auth.scope if isinstance(endpoint_spec.auth, Scoped) else None
        if isinstance(endpoint_spec.auth, Public):
            assert op["security"] == [], where
        else:
            assert {"bearerAuth", "apiKeyAuth", "oauth2Password"} <= {k for s in op["security"] for k in s}, where
        if scope:
            assert f"`{scope}`" in op["description"], where
        if docs.request is not None:
            body = op["requestBody"]["content"]["application/json"]
            assert body["schema"] == {"$ref": f"#/components/schemas/{docs.request.__name__}"} and body["examples"]
        ok = op["responses"][str(docs.status)]
        if docs.events:
            assert "text/event-stream" in ok["content"], where
        elif docs.response is not None:
            assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/" + docs.response.__name__)
        for code in docs.errors:
            assert "application/problem+json" in op["responses"][str(code)]["content"], (where, code)
        if endpoint_spec.limits is not None:
            assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(ok.get("headers", {})), where
            assert "429" in op["responses"], where


async def test_every_example_validates_against_its_schema(spec: dict[str, Any]) -> None:
    registry = Registry().with_resource("urn:spec", Resource(spec, specification=DRAFT202012))
    checked = 0
    for path, method, op in _operations(spec):
        bodies = [("request", op.get("requestBody", {}).get("content", {}))]
        bodies += [(code, r.get("content", {})) for code, r in op["responses"].items()]
        for label, content in bodies:
            for media, entry in content.items():
                schema = _absolute(entry["schema"])
                validator = jsonschema.Draft202012Validator(schema, registry=registry)
                for example in entry.get("examples", {}).values():
                    errors = [e.message for e in validator.iter_errors(example["value"])]
                    assert not errors, f"{method.upper()} {path} {label} {media}: {errors}"
                    checked += 1
    assert checked > 100


def _absolute(schema: Any) -> Any:
    """Point the document's local refs at the registered resource."""
    if isinstance(schema, dict):
        return {k: ("urn:spec" + v if k == "$ref" and v.startswith("#") else _absolute(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_absolute(v) for v in schema]
    return schema


async def test_docs_pages_work_offline(client: Client) -> None:
    for page in ("/docs", "/redoc"):
        resp = await client.get(page)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href)="([^"]+)"', resp.text)
        assert refs and not [r for r in refs if r.startswith(("http:", "https:", "//"))], refs
        for ref in refs:
            asset = await client.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert (await client.get("/docs/static/../../etc/passwd")).status_code == 404
    assert (await client.get("/docs/static/nope.js")).status_code == 404
    init = (await client.get("/docs/static/swagger-init.js")).text
    assert '"/openapi.json"' in init and "persistAuthorization" in init


SWAGGER_BASIC = {"Authorization": "Basic Og=="}  # btoa(client_id + ":" + client_secret), both empty


async def test_authorize_button_password_flow_then_async_flow(client: Client) -> None:
    """What /docs sends by default: Swagger UI's password flow puts the (empty) OAuth2 client
    credentials in a Basic header and the user's in the form; then calls use the bearer token."""
    await add_user(client.app, "swagger@example.com", password="swagger password 1")
    del client.headers["X-API-Key"]
    form = {"grant_type": "password", "scope": "", "username": "swagger@example.com", "password": "swagger password 1"}
    resp = await client.post("/api/v1/auth/token", data=form, headers=SWAGGER_BASIC)
    assert resp.status_code == 200, resp.text
    bearer = {"Authorization": f"Bearer {resp.json()['access_token']}"}
    queued = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "Hello"}, headers=bearer)
    assert queued.status_code == 202, queued.text
    status = await client.get(queued.headers["Location"], headers=bearer)
    assert status.status_code == 200 and status.json()["task_id"] == queued.json()["task_id"], status.text
