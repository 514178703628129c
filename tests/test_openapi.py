"""The OpenAPI document: valid 3.1, matches the route table both ways, examples match schemas."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from agent_service.config import Settings
from agent_service.identity.schemas import SCOPES
from agent_service.kit import pagination
from agent_service.kit.endpoint import Public, Scoped
from agent_service.kit.openapi.builder import documented, walk
from agent_service.kit.openapi.components import CURSOR_PATTERN
from agent_service.kit.openapi.operations import HEADER_DOCS
from agent_service.tasks import follow
from tests.support.apps import Client, add_user, app_client

pytestmark = pytest.mark.sqlite_only  # the document and the docs pages: no SQL of their own

TAG_ORDER = ["Health", "Authentication", "Agents", "Background Jobs", "Sessions", "Webhooks", "Protocols", "API Keys",
             "Audit Logs", "Admin"]
# routed but no API operation: the docs and dashboard pages, and the paths that moved (still served)
PAGES = {("/docs", "get"), ("/redoc", "get"), ("/docs/static/{name}", "get"), ("/docs/oauth2-redirect", "get"),
         ("/dashboard", "get"), ("/dashboard/static/{name}", "get")}
MOVED = {("/api/v1/agents/tasks/{task_id}", "get"): "/api/v1/agents/tasks/{task_id}/status",
         ("/api/v1/jobs/maintenance/{name}", "post"): "/api/v1/jobs/maintenance/{name}/run"}


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
    password = schemes["oauth2Password"]["flows"]["password"]
    assert password["tokenUrl"] == "/api/v1/auth/token"
    assert list(password["scopes"]) == list(SCOPES) and all(password["scopes"].values())
    assert spec["servers"] == [{"url": "/", "description": "This service"}]


async def test_servers_name_the_public_base_url(settings: Settings) -> None:
    async with app_client(msgspec.structs.replace(settings, public_base_url="https://agents.test/")) as c:
        assert (await c.get("/openapi.json")).json()["servers"][0]["url"] == "https://agents.test"


async def test_every_route_is_documented_and_every_documented_path_is_routed(client: Client,
                                                                            spec: dict[str, Any]) -> None:
    routed = {(path, method) for path, method, _ in walk(list(client.app.routes))}
    in_doc = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routed - in_doc == PAGES | set(MOVED), f"routed but not documented: {sorted(routed - in_doc)}"
    assert in_doc - routed == set(), f"documented but not routed: {sorted(in_doc - routed)}"
    assert {(new, m) for (_, m), new in MOVED.items()} <= in_doc


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
    assert list(stream) == ["text/event-stream"]
    limited = spec["paths"]["/api/v1/agents/{agent_id}/invoke"]["post"]["responses"]
    assert "RateLimit-Remaining" in limited["200"]["headers"] and "429" in limited


async def test_each_operation_matches_its_route_metadata(client: Client, spec: dict[str, Any]) -> None:
    """Public-ness, schemes, scope, bodies and streams as declared by each route's typed EndpointSpec."""
    for path, method, endpoint_spec in documented(list(client.app.routes)):
        docs, op, where = endpoint_spec.docs, spec["paths"][path][method], f"{method.upper()} {path}"
        scope = endpoint_spec.auth.scope if isinstance(endpoint_spec.auth, Scoped) else None
        if isinstance(endpoint_spec.auth, Public):
            assert op["security"] == [], where
        else:
            assert {"bearerAuth", "apiKeyAuth", "oauth2Password"} <= {k for s in op["security"] for k in s}, where
        if scope:
            assert f"`{scope}`" in op["description"] and {"oauth2Password": [scope]} in op["security"], where
        if docs.request is not None:
            body = op["requestBody"]["content"]["application/json"]
            assert body["schema"] == {"$ref": f"#/components/schemas/{docs.request.__name__}"} and body["examples"]
        ok = op["responses"][str(docs.status)]
        if docs.events:
            assert "text/event-stream" in ok["content"], where
        elif docs.media_types:  # a file in several formats: each documented, in order
            assert list(ok["content"]) == list(docs.media_types), where
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
                validator = jsonschema.Draft202012Validator(
                    schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
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


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_streams_describe_each_event_and_can_be_read_as_text(spec: dict[str, Any]) -> None:
    """The schema of an SSE answer is one event (the convention before OpenAPI 3.2's itemSchema):
    a component per event type, naming it and the schema of its JSON data; or, undecoded, the
    stream as a string (generated clients read it as text instead of one JSON object)."""
    cases = {("/api/v1/agents/{agent_id}/stream", "post"): {"chunk": "StreamChunk", "done": "StreamDone",
                                                           "error": "StreamError"},
             ("/api/v1/agents/tasks/{task_id}/events", "get"): {
                 "state": "StateEvent", "progress": "ProgressEvent", "chunk": "ChunkEvent",
                 "reconnect": "ReconnectEvent", "error": "StreamError"}}
    schemas = spec["components"]["schemas"]
    for (path, method), events in cases.items():
        media = spec["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]
        *refs, raw = media["schema"]["oneOf"]
        assert raw["type"] == "string"
        found = {}
        for ref in refs:
            event = schemas[ref["$ref"].rsplit("/", 1)[1]]
            data = event["properties"]["data"]
            assert data["contentMediaType"] == "application/json" and event["required"] == ["event", "data"]
            found[event["properties"]["event"]["const"]] = data["contentSchema"]["$ref"].rsplit("/", 1)[1]
        assert found == events, path
        assert media["examples"]["example"]["value"].startswith("event: ")


async def test_one_content_type_per_body_and_the_token_form_still_works(client: Client,
                                                                      spec: dict[str, Any]) -> None:
    for path, method, op in _operations(spec):
        assert len(op.get("requestBody", {}).get("content", {"-": 0})) == 1, (method, path)
        for code, resp in op["responses"].items():
            # but a download in several formats (an export): generated clients take the first they read, text
            formats = set(resp.get("content", {})) == {"application/x-ndjson", "text/csv"}
            assert len(resp.get("content", {"-": 0})) == 1 or formats, (method, path, code)
    token = spec["paths"]["/api/v1/auth/token"]["post"]
    assert list(token["requestBody"]["content"]) == ["application/json"]
    assert "application/x-www-form-urlencoded" in token["description"] and "`username`" in token["description"]
    await add_user(client.app, "form@example.com", password="form password 12")
    resp = await client.post("/api/v1/auth/token", data={"grant_type": "password", "username": "form@example.com",
                                                         "password": "form password 12"})
    assert resp.status_code == 200 and resp.json()["token_type"] == "bearer", resp.text


async def test_every_timestamp_is_a_date_time(spec: dict[str, Any]) -> None:
    """Each `datetime` field (msgspec documents a naive-capable one as a bare string) is formatted."""
    timestamps = 0
    for name, schema in spec["components"]["schemas"].items():
        for prop, sub in schema.get("properties", {}).items():
            if prop.endswith("_at") or prop in ("timestamp", "since", "until", "cutoff_time", "last_heartbeat",
                                                "minute", "last_activity", "scheduled_for"):
                strings = [a for a in [sub, *sub.get("anyOf", [])] if a.get("type") == "string"]
                assert strings and all(a.get("format") == "date-time" for a in strings), (name, prop, sub)
                timestamps += 1
    assert timestamps > 40
    since = {p["name"]: p for p in spec["paths"]["/api/v1/audit-logs"]["get"]["parameters"]}["since"]
    assert since["schema"]["format"] == "date-time"


async def test_no_unused_components(spec: dict[str, Any]) -> None:
    used = _refs(spec["paths"])
    while True:  # and what those reach
        more = _refs([spec["components"]["schemas"][n] for n in used]) - used
        if not more:
            break
        used |= more
    assert set(spec["components"]["schemas"]) == used
    assert not {"PageQuery", "TaskQuery", "AuditQuery", "AuditRange", "SessionQuery"} & used


async def test_links_lead_from_a_queued_task_to_its_status_events_and_cancel(spec: dict[str, Any]) -> None:
    ops = {op["operationId"]: (path, op) for path, _, op in _operations(spec)}
    for op_id in ("invoke_async", "invoke_async_agent_id"):
        links = ops[op_id][1]["responses"]["202"]["links"]
        assert {link["operationId"] for link in links.values()} == {"get_task", "task_events", "cancel_task"}
        assert all(link["parameters"] == {"task_id": "$response.body#/task_id"} for link in links.values())
    assert ops["get_task"][0] == "/api/v1/agents/tasks/{task_id}/status"
    count = 0
    for _, op in ops.values():
        for resp in op["responses"].values():
            for link in resp.get("links", {}).values():
                _, target = ops[link["operationId"]]
                path_params = {p["name"] for p in target["parameters"] if p["in"] == "path"}
                assert set(link["parameters"]) == path_params and link["description"], link
                assert all(v.startswith("$response.body#/") for v in link["parameters"].values())
                count += 1
    assert count >= 12


async def test_opaque_parameters_have_the_pattern_of_real_values(spec: dict[str, Any]) -> None:
    cursor = pagination.encode("2026-11-25T12:00:00.000000+00:00", "9f1c2a7b3d4e4f5a8b6c7d8e9f0a1b2c")
    assert re.fullmatch(CURSOR_PATTERN, cursor) and re.fullmatch(CURSOR_PATTERN, pagination.encode("x", 2**62))
    assert HEADER_DOCS["Last-Event-ID"][1] == follow._EVENT_ID.pattern
    for path, method, op in _operations(spec):
        for p in op["parameters"]:
            if p["name"] == "cursor":
                assert p["schema"]["pattern"] == CURSOR_PATTERN, (method, path)
            if p["name"] == "Last-Event-ID":
                assert p["schema"]["pattern"] == follow._EVENT_ID.pattern, (method, path)


async def test_moved_paths_still_answer_and_locations_point_at_the_documented_one(client: Client) -> None:
    admin = {"X-API-Key": await add_user(client.app, "mover@example.com", admin=True)}
    queued = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "Hello"})
    task_id = queued.json()["task_id"]
    assert queued.headers["location"] == f"/api/v1/agents/tasks/{task_id}/status" == queued.json()["status_url"]
    for path in (f"/api/v1/agents/tasks/{task_id}", f"/api/v1/agents/tasks/{task_id}/status"):
        resp = await client.get(path)
        assert resp.status_code == 200 and resp.json()["task_id"] == task_id, (path, resp.text)
    for path in ("/api/v1/jobs/maintenance/cleanup_temp_files", "/api/v1/jobs/maintenance/cleanup_temp_files/run"):
        resp = await client.post(path, headers=admin)
        assert resp.status_code == 202 and resp.headers["location"].endswith("/status"), (path, resp.text)


async def test_an_integer_field_takes_an_integral_number(client: Client) -> None:
    """JSON Schema's `integer` includes 30.0 (what some generated clients send); 30.5 is still refused."""
    body = {"name": "ci", "scopes": ["tasks:read"]}
    made = await client.post("/api/v1/api-keys", json={**body, "expires_in_days": 30.0})
    assert made.status_code == 201, made.text
    refused = await client.post("/api/v1/api-keys", json={**body, "expires_in_days": 30.5})
    assert refused.status_code == 422
    assert [e["path"] for e in refused.json()["errors"]] == ["$.expires_in_days"]
    huge = await client.post("/api/v1/api-keys", json={**body, "expires_in_days": 1e300})
    assert huge.status_code == 422, huge.text
