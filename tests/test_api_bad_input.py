"""Every bad input gets a precise problem+json 4xx and loses nothing; never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from tests.support.apps import Client, app_client
from tests.support.problems import assert_problem

JSON = {"content-type": "application/json"}
ROUTES = ["/api/v1/agents/invoke", "/api/v1/agents/stream", "/api/v1/agents/echo/invoke-async"]
# a body, a route or a header refused before any handler runs: nothing of it reaches SQL
REFUSED_BEFORE_SQL = pytest.mark.sqlite_only


async def queued(settings: Settings) -> int:
    r = aioredis.Redis.from_url(settings.redis_url)  # type: ignore[arg-type]
    n = await r.zcard(settings.queue_name)
    await r.aclose()
    return int(n)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("body", [b"{", b"not json", b'{"message": "x",}', b"\xff\xfe"])
@REFUSED_BEFORE_SQL
async def test_malformed_json_is_400(client: Client, path: str, body: bytes) -> None:
    assert_problem(await client.post(path, content=body, headers=JSON), 400, "malformed_json")


@pytest.mark.parametrize("path", ROUTES)
@REFUSED_BEFORE_SQL
async def test_schema_errors_list_every_bad_field(client: Client, path: str) -> None:
    body = {"message": "", "session_id": 5, "metadata": [1], "extra": True}
    problem = assert_problem(await client.post(path, json=body), 422, "validation_error")
    paths = {e["path"] for e in problem["errors"]}  # type: ignore[attr-defined]
    assert paths == {"$.message", "$.session_id", "$.metadata", "$.extra"}


@pytest.mark.parametrize(
    ("body", "path"),
    [({}, "$.message"), ({"message": "x" * 10_001}, "$.message"), ({"message": 12}, "$.message"),
     ({"message": None}, "$.message"), ({"message": "ok", "session_id": "bad id!"}, "$.session_id"),
     ({"message": "ok", "stream": "yes"}, "$.stream"), ([1, 2], "$")],
)
@REFUSED_BEFORE_SQL
async def test_each_schema_error_names_its_path(client: Client, body: object, path: str) -> None:
    resp = await client.post("/api/v1/agents/echo/invoke-async", json=body)
    problem = assert_problem(resp, 422)
    assert [e["path"] for e in problem["errors"]] == [path]  # type: ignore[attr-defined]


@REFUSED_BEFORE_SQL
async def test_stream_flag_is_not_accepted_by_sync_invoke(client: Client) -> None:
    problem = assert_problem(await client.post("/api/v1/agents/invoke", json={"message": "x", "stream": True}), 422)
    assert problem["errors"] == [{"path": "$.stream", "message": "Unknown field"}]


async def test_max_length_message_is_accepted(client: Client) -> None:
    resp = await client.post("/api/v1/agents/invoke", json={"message": "x" * 10_000})
    assert resp.status_code == 200 and resp.json()["response"] == "x" * 10_000


@pytest.mark.parametrize("path", ROUTES)
@REFUSED_BEFORE_SQL
async def test_wrong_content_type_is_415(client: Client, path: str) -> None:
    resp = await client.post(path, content=b"message=hi", headers={"content-type": "application/x-www-form-urlencoded"})
    assert_problem(resp, 415)


@REFUSED_BEFORE_SQL
async def test_oversized_body_is_413(client: Client) -> None:
    body = json.dumps({"message": "x", "metadata": {"pad": "y" * 2_000_000}}).encode()
    assert_problem(await client.post("/api/v1/agents/invoke", content=body, headers=JSON), 413)


@pytest.mark.parametrize("path", ["/api/v1/agents/nope/invoke", "/api/v1/agents/nope/stream",
                                  "/api/v1/agents/nope/invoke-async"])
async def test_unknown_agent_is_404_and_nothing_is_queued(client: Client, settings: Settings, path: str) -> None:
    assert_problem(await client.post(path, json={"message": "hi"}), 404, "agent_not_found")
    assert await queued(settings) == 0


async def test_unconfigured_llm_agent_is_503_naming_the_setting_to_configure(client: Client) -> None:
    for route in ("invoke", "stream", "invoke-async"):
        resp = await client.post(f"/api/v1/agents/simple_llm_agent/{route}", json={"message": "hi"})
        body = assert_problem(resp, 503, "agent_not_configured")
        assert "LLM_BASE_URL" in str(body["detail"]) and "Retrying will not help" in str(body["detail"])
        assert "retry-after" not in resp.headers  # a configuration state, not an outage
    agents = {a["id"]: a for a in (await client.get("/api/v1/agents")).json()["agents"]}
    llm, echo = agents["simple_llm_agent"], agents["echo"]
    assert llm["available"] is False and llm["missing_settings"] == ["LLM_BASE_URL"]
    assert "LLM_BASE_URL" in llm["unavailable_reason"]
    assert echo["available"] is True and echo["unavailable_reason"] is None and echo["missing_settings"] == []


async def test_bad_agent_metadata_is_422_on_invoke_stream_and_invoke_async(client: Client, settings: Settings) -> None:
    for path in ("/api/v1/agents/echo/invoke", "/api/v1/agents/echo/stream", "/api/v1/agents/echo/invoke-async"):
        problem = assert_problem(await client.post(path, json={"message": "x", "metadata": {"delay": "slow"}}), 422)
        assert problem["errors"][0]["path"] == "$.metadata"  # type: ignore[index]
    assert await queued(settings) == 0  # the doomed job was never queued


async def test_agent_failure_on_sync_invoke_is_a_clean_problem(client: Client) -> None:
    resp = await client.post("/api/v1/agents/echo/invoke", json={"message": "x", "metadata": {"fail": "permanent"}})
    assert_problem(resp, 502, "agent_error")
    resp = await client.post("/api/v1/agents/echo/invoke", json={"message": "x", "metadata": {"fail": "transient"}})
    assert_problem(resp, 503, "agent_temporarily_unavailable")
    assert resp.headers["retry-after"]


async def test_unknown_task_is_404(client: Client) -> None:
    assert_problem(await client.get("/api/v1/agents/tasks/does-not-exist"), 404, "task_not_found")
    assert_problem(await client.get("/api/v1/agents/tasks/" + "x" * 500), 404)


@REFUSED_BEFORE_SQL
async def test_unknown_route_and_wrong_method(client: Client) -> None:
    assert_problem(await client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_problem(await client.get("/api/v1/agents/invoke"), 405, "method_not_allowed")


@REFUSED_BEFORE_SQL
async def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(client: Client) -> None:
    resp = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    resp = await client.get("/health/live", headers={"X-Request-ID": "bad id\twith junk" + "x" * 200})
    rid = resp.headers["x-request-id"]
    assert rid != "bad id" and len(rid) == 32


@REFUSED_BEFORE_SQL
async def test_unexpected_exception_is_a_generic_500_with_request_id(client: Client) -> None:
    async def boom(request: object) -> None:
        raise RuntimeError("secret internal detail")

    from starlette.routing import Route

    client.app.router.routes.append(Route("/boom", boom))
    resp = await client.get("/boom")
    body = assert_problem(resp, 500, "internal_error")
    assert "secret" not in resp.text and body["request_id"]


@pytest.fixture
async def client_without_redis(make_settings) -> AsyncIterator[Client]:  # type: ignore[no-untyped-def]
    async with app_client(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")) as c:
        yield c


async def test_redis_down_gives_503_for_queue_routes_while_sync_invoke_works(client_without_redis: Client) -> None:
    c = client_without_redis
    resp = await c.post("/api/v1/agents/echo/invoke-async", json={"message": "hi"})
    assert_problem(resp, 503, "rate_limiter_unavailable")  # the limiter fails closed for queued work
    assert resp.headers["retry-after"]
    ok = await c.post("/api/v1/agents/echo/invoke", json={"message": "still here"})
    assert ok.status_code == 200 and ok.json()["response"] == "still here"
    ready = await c.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["components"]["redis"]["ok"] is False


async def test_task_status_and_list_come_from_sql_when_redis_is_down(client: Client, make_settings) -> None:  # type: ignore[no-untyped-def]
    accepted = (await client.post("/api/v1/agents/echo/invoke-async", json={"message": "hi"})).json()
    # same database, dead Redis: the state is in SQL, and the answer says the live part is missing
    async with app_client(make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"), authenticated=False) as c:
        c.headers["X-API-Key"] = client.headers["X-API-Key"]
        resp = await c.get(f"/api/v1/agents/tasks/{accepted['task_id']}")
        assert resp.status_code == 200 and resp.json()["state"] == "PENDING" and resp.json()["live"] is False
        listed = await c.get("/api/v1/agents/tasks")
        assert listed.status_code == 200 and [t["task_id"] for t in listed.json()["items"]] == [accepted["task_id"]]


async def test_metadata_a_job_cannot_carry_is_422_not_500(client: Client, settings: Settings) -> None:
    body = b'{"message": "x", "metadata": {"n": 3116049849561726262903023075328}}'  # found by schemathesis
    resp = await client.post("/api/v1/agents/echo/invoke-async", content=body, headers=JSON)
    assert assert_problem(resp, 422)["errors"][0]["path"] == "$.metadata"  # type: ignore[index]
    assert await queued(settings) == 0
    assert (await client.post("/api/v1/agents/echo/invoke", content=body, headers=JSON)).status_code == 200
