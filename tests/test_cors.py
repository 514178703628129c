"""CORS_ORIGINS in process: the allow-list's preflights and actual responses (errors included, so a
browser can read a 401 or a 429), `*` never with credentials, a preflight for every documented
operation, and the values that are not an allow-list refused at start.

What a real browser makes of these headers is in tests/test_browser_events.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from agent_service.config import Settings, load_settings
from agent_service.errors import ConfigError
from tests.support.apps import Client, app_client
from tests.support.environment import TEST_ENV
from tests.support.problems import assert_problem

pytestmark = pytest.mark.sqlite_only  # headers around the routes: no SQL of their own

APP = "https://app.example"
OTHER = "https://evil.example"
INVOKE_ASYNC = "/api/v1/agents/echo/invoke-async"
EXPOSED = {"x-request-id", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after", "location"}
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def listed(value: str | None) -> set[str]:
    """A comma-separated header value as a set of lower-case names."""
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def preflight(origin: str, method: str = "POST", headers: str = "x-api-key, content-type, idempotency-key",
              ) -> dict[str, str]:
    # what a browser sends: no credentials, only the Access-Control-Request-* questions
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


@pytest.fixture
def cors_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(origins: str = f"{APP}, http://localhost:5173", **overrides: Any) -> Settings:
        return make_settings(cors_origins=origins, **overrides)

    return make


@pytest.fixture
async def cors(cors_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    async with app_client(cors_settings()) as c:
        yield c


async def test_without_cors_origins_nothing_is_allowed(client: Client) -> None:
    resp = await client.options(INVOKE_ASYNC, headers=preflight(APP))
    assert resp.status_code == 405  # no CORS layer at all: an OPTIONS is a method the route lacks
    assert "access-control-allow-origin" not in resp.headers
    actual = await client.get("/api/v1/agents", headers={"Origin": APP})
    assert actual.status_code == 200
    assert not [h for h in actual.headers if h.startswith("access-control-")], actual.headers


async def test_an_allowed_origins_preflight(cors: Client) -> None:
    del cors.headers["X-API-Key"]
    resp = await cors.options(INVOKE_ASYNC, headers=preflight(APP))
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == APP
    assert resp.headers["access-control-allow-credentials"] == "true"
    assert "POST" in {m.upper() for m in listed(resp.headers["access-control-allow-methods"])}
    assert {"x-api-key", "content-type", "idempotency-key"} <= listed(resp.headers["access-control-allow-headers"])
    assert "origin" in listed(resp.headers["vary"])
    assert resp.headers["access-control-max-age"] == "600"
    # the second origin of the list, with a trailing slash in the setting dropped, is as good
    other = await cors.options(INVOKE_ASYNC, headers=preflight("http://localhost:5173"))
    assert other.status_code == 200 and other.headers["access-control-allow-origin"] == "http://localhost:5173"


@pytest.mark.parametrize("origin", [OTHER, "https://app.example.evil.example", "http://app.example",
                                    "https://app.example:8443", "null"])
async def test_another_origin_is_not_allowed(cors: Client, origin: str) -> None:
    resp = await cors.options(INVOKE_ASYNC, headers=preflight(origin))
    assert resp.status_code == 400
    assert "access-control-allow-origin" not in resp.headers
    # the actual request is served (CORS is the browser's to enforce) but nothing lets the page read it
    actual = await cors.get("/api/v1/agents", headers={"Origin": origin})
    assert actual.status_code == 200
    assert "access-control-allow-origin" not in actual.headers


async def test_a_header_outside_the_list_is_not_allowed(cors: Client) -> None:
    resp = await cors.options(INVOKE_ASYNC, headers=preflight(APP, headers="x-api-key, x-forwarded-for"))
    assert resp.status_code == 400


async def test_any_origin_never_goes_with_credentials(cors_settings: Callable[..., Settings]) -> None:
    async with app_client(cors_settings("*")) as c:
        pre = await c.options(INVOKE_ASYNC, headers=preflight(OTHER))
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in pre.headers
        for headers in ({"Origin": OTHER}, {"Origin": OTHER, "Cookie": "session=x"}):
            actual = await c.get("/api/v1/agents", headers=headers)
            assert actual.status_code == 200
            assert actual.headers["access-control-allow-origin"] in ("*", OTHER)
            assert "access-control-allow-credentials" not in actual.headers, headers


def assert_readable(resp: httpx.Response, origin: str = APP) -> None:
    """The response as a page of `origin` may read it: its origin allowed, the headers it needs exposed."""
    assert resp.headers["access-control-allow-origin"] == origin, resp.headers
    assert resp.headers["access-control-allow-credentials"] == "true"
    assert EXPOSED <= listed(resp.headers["access-control-expose-headers"]), resp.headers
    assert "origin" in listed(resp.headers.get("vary"))


async def test_actual_responses_errors_included_are_readable(cors_settings: Callable[..., Settings]) -> None:
    async with app_client(cors_settings(rate_limit_free=3)) as c:
        origin = {"Origin": APP}
        ok = await c.post(INVOKE_ASYNC, json={"message": "hi"}, headers={**origin, "Idempotency-Key": "k-1"})
        assert ok.status_code == 202, ok.text
        assert_readable(ok)
        assert ok.headers["location"] and ok.headers["ratelimit-limit"] == "3"

        # refused before any route: a bad key, and no credential at all
        bad = await c.get("/api/v1/agents", headers={**origin, "X-API-Key": "sk_live_not-a-real-key"})
        assert_problem(bad, 401)
        assert_readable(bad)
        del c.headers["X-API-Key"]
        anonymous = await c.get("/api/v1/agents/tasks", headers=origin)
        assert_problem(anonymous, 401)
        assert_readable(anonymous)

        c.headers["X-API-Key"] = ok.request.headers["X-API-Key"]
        answers = [await c.get("/api/v1/agents", headers=origin) for _ in range(4)]
        limited = next(r for r in answers if r.status_code != 200)
        assert_problem(limited, 429, "rate_limited")
        assert_readable(limited)
        assert limited.headers["retry-after"] and limited.headers["ratelimit-remaining"] == "0"


def _operations(spec: dict[str, Any]) -> list[tuple[str, str]]:
    return [(re.sub(r"\{[^}/]+\}", "p1", path), method.upper())
            for path, ops in spec["paths"].items() for method in ops
            if method in ("get", "put", "post", "delete", "patch", "head", "options", "trace")]


async def test_every_documented_operation_can_be_preflighted(cors: Client) -> None:
    spec = (await cors.get("/openapi.json")).json()
    operations = _operations(spec)
    assert len(operations) > 20 and ("/api/v1/agents/tasks/p1/events", "GET") in operations
    del cors.headers["X-API-Key"]
    asked = "authorization, x-api-key, content-type, idempotency-key, last-event-id, x-request-id"
    failures = []
    for path, method in operations:
        resp = await cors.options(path, headers=preflight(APP, method, asked))
        if not (resp.status_code == 200 and resp.headers.get("access-control-allow-origin") == APP
                and method in {m.upper() for m in listed(resp.headers.get("access-control-allow-methods"))}
                and listed(asked) <= listed(resp.headers.get("access-control-allow-headers"))):
            failures.append((method, path, resp.status_code, resp.text[:200]))
    assert failures == []
    assert {m for _, m in operations} <= METHODS


@pytest.mark.parametrize("value", ["https://x.com/path", "*,https://a.com", "https://a.com, *", "x.com",
                                   "ftp://x.com", "https://a.com/app/", "https://", "https://a.com?x=1",
                                   "https://a.com#top", "https://user@a.com", "https://a.com:port"])
def test_a_value_that_is_not_an_allow_list_stops_the_start(value: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_settings({**TEST_ENV, "CORS_ORIGINS": value}, env_file=None)


def test_an_allow_list_is_read_as_origins() -> None:
    settings = load_settings({**TEST_ENV, "CORS_ORIGINS": " https://a.com/ ,http://localhost:5173,, "}, env_file=None)
    assert settings.cors_origin_list == ["https://a.com", "http://localhost:5173"]
    assert load_settings({**TEST_ENV, "CORS_ORIGINS": "*"}, env_file=None).cors_origin_list == ["*"]
    assert load_settings(TEST_ENV, env_file=None).cors_origin_list == []
