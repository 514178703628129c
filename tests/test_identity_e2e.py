"""Identity over real HTTP: the seed flow with a JWT, and logout seen at once by a second web process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from agent_service.redis_server import free_port
from tests.conftest import Live, wait_http_ok
from tests.test_e2e import poll, submit


def test_seed_flow_with_a_jwt_and_logout_on_another_process(live_service: Live, env: dict[str, str],
                                                           spawn: Callable[..., Any]) -> None:
    one = live_service.base
    port = free_port()
    spawn("web", env, PORT=str(port))
    two = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{two}/health/live")
    tokens = httpx.post(f"{one}/api/v1/auth/token",
                        json={"email": "e2e@example.com", "password": "e2e password!"}).json()
    jwt_headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    # the seed's flow with a JWT instead of the API key
    as_jwt = Live(one, live_service.web, live_service.worker, "unused")
    as_jwt.headers = jwt_headers
    task = submit(as_jwt, "echo", {"message": "hello with a token"})
    final, _ = poll(as_jwt, task, {"SUCCESS", "FAILURE"})
    assert final["state"] == "SUCCESS" and final["result"]["content"] == "hello with a token"
    # the same token works on the second process, until it is revoked on the first
    assert httpx.get(f"{two}/api/v1/auth/me", headers=jwt_headers).status_code == 200
    assert httpx.post(f"{one}/api/v1/auth/logout", headers=jwt_headers).status_code == 204
    resp = httpx.get(f"{two}/api/v1/auth/me", headers=jwt_headers)
    assert resp.status_code == 401 and resp.json()["code"] == "token_revoked"
    # the API key keeps working everywhere
    assert httpx.get(f"{two}/api/v1/auth/me", headers=live_service.headers).status_code == 200
