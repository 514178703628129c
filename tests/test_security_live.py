"""The identity hardening against the running service (uvicorn and a worker as child processes): a
downgraded user's old key, a flood of bad credentials in the audit log, and the cache and
content-security headers as a browser or a proxy between would see them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from agent_service.cli.embedded import free_port
from tests.support.identity import KEYS, ME, TOKEN, USERS, bearer, key_header
from tests.support.problems import assert_problem
from tests.support.processes import E2E_PASSWORD, Live, Process, bootstrap_user
from tests.support.waiting import wait_http_ok, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.sqlite_only]  # child processes; nothing here is about SQL
FREE, ENTERPRISE, BAD_CREDENTIALS_PER_IP = 200, 5000, 150
AUDIT = "/api/v1/audit-logs"


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "RATE_LIMIT_FREE": str(FREE), "RATE_LIMIT_ENTERPRISE": str(ENTERPRISE),
            "RATE_LIMIT_UNAUTHENTICATED_PER_IP": str(BAD_CREDENTIALS_PER_IP)}


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


# --- 2. a key is never above its user's current tier ----------------------------------------------------

def test_a_downgraded_users_old_enterprise_key_is_free_in_every_respect(live_service: Live,
                                                                        env: dict[str, str]) -> None:
    root = key_header(bootstrap_user(env, "root@example.com", admin=True))
    with httpx.Client(base_url=live_service.base, timeout=10) as c:
        user = ok(c.post(USERS, json={"email": "big@example.com", "password": "a big spender", "tier": "enterprise"},
                         headers=root), 201)
        token = ok(c.post(TOKEN, json={"email": "big@example.com", "password": "a big spender"}))["access_token"]
        old = ok(c.post(KEYS, json={"name": "ent", "scopes": ["agents:invoke", "api_keys:manage", "tasks:read"],
                                    "tier": "enterprise"}, headers=bearer(token)), 201)
        resp = c.get(ME, headers=key_header(old["key"]))
        assert ok(resp)["tier"] == "enterprise" and resp.headers["ratelimit-limit"] == str(ENTERPRISE)

        assert ok(c.patch(f"{USERS}/{user['id']}", json={"tier": "free"}, headers=root))["tier"] == "free"
        for headers in (key_header(old["key"]), bearer(token)):  # the key, and a token issued before
            resp = c.get(ME, headers=headers)
            assert ok(resp)["tier"] == "free" and resp.headers["ratelimit-limit"] == str(FREE)
            resp = c.get("/api/v1/agents", headers=headers)
            assert resp.status_code == 200 and resp.headers["ratelimit-limit"] == str(FREE)
        # nor can the old key pass on what its user lost
        for tier in ("enterprise", "pro"):
            resp = c.post(KEYS, json={"name": "x", "scopes": ["tasks:read"], "tier": tier},
                          headers=key_header(old["key"]))
            assert tier in str(assert_problem(resp, 403, "tier_not_grantable")["detail"])
        rotated = ok(c.post(f"{KEYS}/{old['id']}/rotate", headers=key_header(old["key"])), 201)
        assert rotated["tier"] == "free"
        assert ok(c.get(ME, headers=key_header(rotated["key"])))["tier"] == "free"
        # upgraded again, the user does not lift the rotated key: it is a free key now
        ok(c.patch(f"{USERS}/{user['id']}", json={"tier": "enterprise"}, headers=root))
        resp = c.get(ME, headers=key_header(rotated["key"]))
        assert ok(resp)["tier"] == "free" and resp.headers["ratelimit-limit"] == str(FREE)


# --- 7. a flood of bad credentials is a few audit rows that still count every failure ----------------------

def failed_auth(c: httpx.Client, admin: dict[str, str]) -> list[dict[str, Any]]:
    query: dict[str, str | int] = {"action": "FAILED_AUTH", "limit": 200}
    rows: list[dict[str, Any]] = ok(c.get(AUDIT, params=query, headers=admin))["items"]
    return rows


def test_a_flood_of_bad_keys_is_aggregated_in_the_audit_log(live_service: Live, env: dict[str, str],
                                                            spawn: Callable[..., Process]) -> None:
    admin = key_header(bootstrap_user(env, "auditor@example.com", admin=True))
    with httpx.Client(base_url=live_service.base, timeout=10) as c:
        codes = [c.get("/api/v1/agents", headers=key_header(f"sk_live_{uuid.uuid4().hex}")).status_code
                 for _ in range(200)]
        refused, limited = codes.count(401), codes.count(429)
        assert refused + limited == 200 and limited and refused >= BAD_CREDENTIALS_PER_IP, codes
        # the writer is first in, first out: once a later entry is stored, every earlier one is too
        resp = c.post("/api/v1/agents/echo/invoke", json={"message": "after"},
                      headers={**admin, "X-Request-ID": "after-the-flood"})
        assert resp.status_code == 200, resp.text
        wait_until(lambda: ok(c.get(AUDIT, params={"request_id": "after-the-flood"}, headers=admin))["items"],
                   timeout=10, message=lambda: live_service.web.output()[-2000:])
        during = failed_auth(c, admin)
        assert 1 <= len(during) <= 3, [(r["client_ip"], r["metadata"]) for r in during]

    live_service.web.stop()  # a clean stop writes the summary of the window still open
    port = free_port()
    later = spawn("web", env, PORT=str(port))
    wait_http_ok(f"http://127.0.0.1:{port}/health/ready", on_fail=lambda: later.output()[-3000:])
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        rows = failed_auth(c, admin)
    summaries = [r for r in rows if "repeated" in r["metadata"]]
    assert len(rows) <= 4 and len(summaries) == 1, [(r["client_ip"], r["metadata"]) for r in rows]
    summary = summaries[0]
    assert summary["client_ip"] == "127.0.0.1" and summary["status"] == 401
    assert summary["metadata"]["window_start"] <= summary["metadata"]["window_end"]
    # nothing lost: the single rows and the folded ones are every 401 (the 429s were never failures
    # of a credential check, and are not audited)
    assert len(rows) - 1 + summary["metadata"]["repeated"] == refused


# --- 8. no shared cache keeps an authenticated answer; the docs pages restrict what they run ---------------

def test_authenticated_answers_are_no_store_and_the_docs_carry_a_content_security_policy(
    live_service: Live, env: dict[str, str],
) -> None:
    admin = key_header(bootstrap_user(env, "ops@example.com", admin=True))
    seen: list[tuple[str, str, int, str | None]] = []
    with httpx.Client(base_url=live_service.base, timeout=10) as c:
        spec = ok(c.get("/openapi.json"))
        # every operation that takes credentials, called as an admin so each one reaches its endpoint:
        # made-up ids and empty bodies give its own errors (404, 422), the rest succeed
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                if not op.get("security"):
                    continue
                url = re.sub(r"\{[^}]+\}", "no-such-id", path)
                body: dict[str, Any] | None = {} if method in ("post", "put", "patch") else None
                resp = c.request(method.upper(), url, headers=admin, json=body)
                assert resp.status_code < 500, (method, path, resp.text)
                seen.append((method, path, resp.status_code, resp.headers.get("cache-control")))
        resp = c.post("/api/v1/agents/echo/invoke", json={"message": "private"}, headers=admin)
        seen.append(("post", "echo invoke", resp.status_code, resp.headers.get("cache-control")))
        assert len(seen) >= 25 and {s[2] for s in seen} >= {200, 404, 422}, seen
        assert [s for s in seen if s[3] != "no-store"] == [], "answers a shared cache could keep"

        # the token endpoint's answer is a credential
        bootstrap_user(env, "signer@example.com")
        resp = c.post(TOKEN, json={"email": "signer@example.com", "password": E2E_PASSWORD})
        assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store", resp.headers

        for page in ("/docs", "/redoc"):
            resp = c.get(page)
            assert resp.status_code == 200 and resp.headers["x-content-type-options"] == "nosniff", page
            csp = {d.split()[0]: d.split()[1:] for d in resp.headers["content-security-policy"].split(";") if d.strip()}
            assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"], csp  # no inline script
            assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"], csp
            # and the pages really load only from here (what the policy allows is what they use)
            assert not re.search(r"""(src|href)=["']https?://""", resp.text), resp.text
