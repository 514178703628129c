"""Identity over real HTTP (uvicorn + an arq worker process, real valkey and SQLite): the seed's
curl flow with an API key and with a JWT from /auth/token, and logout seen at once by a second
uvicorn process that shares the Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent_service.cli.embedded import free_port
from tests.support.logs import logged
from tests.support.processes import E2E_EMAIL, E2E_PASSWORD, Live
from tests.support.waiting import wait_http_ok

pytestmark = pytest.mark.e2e  # uvicorn and worker child processes

EMAIL, PASSWORD = E2E_EMAIL, E2E_PASSWORD  # the user bootstrap_user (live_service) creates
TIMEOUT = 5.0


def run_job(base: str, headers: dict[str, str], message: str, *, timeout: float = 20.0) -> dict[str, Any]:
    """curl -X POST .../agents/echo/invoke-async, then poll the status URL until it settles."""
    resp = httpx.post(f"{base}/api/v1/agents/echo/invoke-async", json={"message": message}, headers=headers,
                      timeout=TIMEOUT)
    assert resp.status_code == 202, resp.text
    status_url = resp.json()["status_url"]
    assert resp.headers["location"] == status_url
    deadline = time.monotonic() + timeout
    while True:
        s = httpx.get(f"{base}{status_url}", headers=headers, timeout=TIMEOUT)
        assert s.status_code == 200, s.text
        body: dict[str, Any] = s.json()
        if body["state"] in ("SUCCESS", "FAILURE", "REVOKED"):
            return body
        assert time.monotonic() < deadline, f"task never settled: {body}"
        time.sleep(0.02)


def get_tokens(base: str, *, form: bool = False) -> dict[str, Any]:
    if form:
        resp = httpx.post(f"{base}/api/v1/auth/token", timeout=TIMEOUT,
                          data={"grant_type": "password", "username": EMAIL, "password": PASSWORD})
    else:
        resp = httpx.post(f"{base}/api/v1/auth/token", json={"email": EMAIL, "password": PASSWORD}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    tokens: dict[str, Any] = resp.json()
    assert tokens["token_type"] == "bearer" and tokens["access_token"] and tokens["refresh_token"]
    return tokens


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def test_seed_flow_with_an_api_key_and_with_a_jwt(live_service: Live) -> None:
    base = live_service.base
    # with the API key
    done = run_job(base, live_service.headers, "hello with a key")
    assert (done["state"], done["status"]) == ("SUCCESS", "completed"), done
    assert done["result"]["content"] == "hello with a key"
    # with a JWT from /auth/token (JSON), and from the OAuth2 form the docs' Authorize button posts
    for form in (False, True):
        jwt_headers = bearer(get_tokens(base, form=form))
        me = httpx.get(f"{base}/api/v1/auth/me", headers=jwt_headers, timeout=TIMEOUT).json()
        assert (me["email"], me["auth_method"]) == (EMAIL, "jwt")
        done = run_job(base, jwt_headers, f"hello with a token {form}")
        assert done["state"] == "SUCCESS" and done["result"]["content"] == f"hello with a token {form}", done
        # same owner whichever credential: the key reads the task the JWT queued
        again = httpx.get(f"{base}/api/v1/agents/tasks/{done['task_id']}", headers=live_service.headers,
                          timeout=TIMEOUT)
        assert again.status_code == 200 and again.json()["state"] == "SUCCESS"
    # and without a credential, over real HTTP too
    anon = httpx.post(f"{base}/api/v1/agents/echo/invoke-async", json={"message": "x"}, timeout=TIMEOUT)
    assert anon.status_code == 401 and anon.json()["code"] == "unauthorized"
    assert anon.headers["www-authenticate"].startswith("Bearer")


def test_logout_takes_effect_on_a_second_web_process(live_service: Live, env: dict[str, str],
                                                     spawn: Callable[..., Any]) -> None:
    one = live_service.base
    port = free_port()
    second = spawn("web", env, PORT=str(port))  # same env: same SQLite file and Redis
    two = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{two}/health/live", timeout=15, on_fail=lambda: second.output()[-3000:])

    tokens = get_tokens(one)
    headers = bearer(tokens)
    for base in (one, two):
        resp = httpx.get(f"{base}/api/v1/auth/me", headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 200 and resp.json()["email"] == EMAIL, resp.text

    resp = httpx.post(f"{one}/api/v1/auth/logout", headers=headers, json={"refresh_token": tokens["refresh_token"]},
                      timeout=TIMEOUT)
    assert resp.status_code == 204, resp.text

    # at once, with no wait: the blacklist lives in the shared Redis
    for base in (two, one):
        resp = httpx.get(f"{base}/api/v1/auth/me", headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 401, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["code"] == "token_revoked"
    resp = httpx.post(f"{two}/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, timeout=TIMEOUT)
    assert resp.status_code == 401 and resp.json()["code"] == "invalid_refresh_token", resp.text

    # other credentials are untouched on both processes
    fresh = bearer(get_tokens(two))
    for base in (one, two):
        assert httpx.get(f"{base}/api/v1/auth/me", headers=fresh, timeout=TIMEOUT).status_code == 200
        assert httpx.get(f"{base}/api/v1/auth/me", headers=live_service.headers, timeout=TIMEOUT).status_code == 200
    # and no process logged a 500 or a secret
    for proc in (live_service.web, second):
        out = proc.output()
        assert not logged(out, status=500) and "Traceback" not in out
        assert tokens["access_token"] not in out and tokens["refresh_token"] not in out and PASSWORD not in out
