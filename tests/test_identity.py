"""Identity: JWTs, refresh rotation, logout, API keys, scopes, ownership and the attacks of issue 3."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent_service.app import create_app
from agent_service.errors import ConfigError
from tests.conftest import TEST_ENV, Client, add_user, app_client
from tests.test_api_bad_input import assert_problem

SECRET = TEST_ENV["JWT_SECRET"]
ME = "/api/v1/auth/me"


def token(
    claims: dict[str, Any], *, key: Any = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None
) -> str:
    now = int(time.time())
    base = {
        "sub": "nobody",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
        "iss": "agent-service",
        "aud": "agent-service",
        "typ": "access",
    }
    return jwt.encode({**base, **claims}, key, algorithm=alg, headers=headers)


async def login(client: Client, email: str, password: str) -> dict[str, Any]:
    resp = await client.post("/api/v1/auth/token", json={"email": email, "password": password})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


@pytest.fixture
async def alice(client: Client) -> dict[str, Any]:
    key = await add_user(client.app, "alice@example.com", password="alice password 1")
    tokens = await login(client, "alice@example.com", "alice password 1")
    return {"key": key, **tokens}


def bearer(t: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {t}"}


async def test_jwt_and_api_key_both_work_and_me_describes_the_caller(client: Client, alice: dict[str, Any]) -> None:
    me = (await client.get(ME, headers=bearer(alice["access_token"]))).json()
    assert me["email"] == "alice@example.com" and me["auth_method"] == "jwt" and me["api_key_id"] is None
    assert "agents:invoke" in me["scopes"] and "admin" not in me["scopes"] and me["tier"] == "free"
    me = (await client.get(ME, headers={"X-API-Key": alice["key"]})).json()
    assert me["auth_method"] == "api_key" and me["api_key_id"] and me["tier"] == "free"
    form = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": "alice@example.com", "password": "alice password 1"},
    )
    assert form.status_code == 200 and form.json()["token_type"] == "bearer" and form.json()["expires_in"] == 900
    claims = jwt.decode(alice["access_token"], SECRET, algorithms=["HS256"], audience="agent-service")
    assert {"sub", "iat", "nbf", "exp", "jti", "iss", "aud", "roles", "scope"} <= set(claims)
    bad_grant = await client.post("/api/v1/auth/token", data={"grant_type": "client_credentials"})
    assert_problem(bad_grant, 422)


@pytest.mark.parametrize(
    "case",
    ["alg_none", "expired", "not_yet_valid", "wrong_aud", "wrong_iss", "tampered", "wrong_secret", "refresh_as_access"],
)
async def test_bad_tokens_are_401(client: Client, alice: dict[str, Any], case: str) -> None:
    sub = jwt.decode(alice["access_token"], SECRET, algorithms=["HS256"], audience="agent-service")["sub"]
    now = int(time.time())
    t = {
        "alg_none": lambda: jwt.encode({"sub": sub, "exp": now + 600}, None, algorithm="none"),
        "expired": lambda: token({"sub": sub, "iat": now - 900, "nbf": now - 900, "exp": now - 10}),
        "not_yet_valid": lambda: token({"sub": sub, "nbf": now + 600, "exp": now + 1200}),
        "wrong_aud": lambda: token({"sub": sub, "aud": "someone-else"}),
        "wrong_iss": lambda: token({"sub": sub, "iss": "evil"}),
        "tampered": lambda: _tamper(alice["access_token"], {"roles": ["admin"], "scope": "admin"}),
        "wrong_secret": lambda: token({"sub": sub}, key="another-secret-of-enough-length-0123456789"),
        "refresh_as_access": lambda: token({"sub": sub, "typ": "refresh"}),
    }[case]()
    resp = await client.get(ME, headers=bearer(t))
    body = assert_problem(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert body["code"] in ("invalid_token", "token_expired")


def _tamper(t: str, changes: dict[str, Any]) -> str:
    head, payload, sig = t.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{sig}"


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Token abc", "Bearer " + "x" * 10_000]
)
async def test_malformed_or_huge_authorization_header_is_401(client: Client, header: str) -> None:
    assert_problem(await client.get(ME, headers={"Authorization": header}), 401)


async def test_huge_api_key_and_invalid_credentials_never_fall_back(client: Client, alice: dict[str, Any]) -> None:
    assert_problem(await client.get(ME, headers={"X-API-Key": "sk_live_" + "y" * 10_000}), 401)
    # an invalid bearer next to a valid key: 401, no fallback to the key
    resp = await client.get(ME, headers={"Authorization": "Bearer garbage", "X-API-Key": alice["key"]})
    assert_problem(resp, 401)
    assert (await client.get(ME, headers={"authorization": f"bearer {alice['access_token']}"})).status_code == 200


async def test_missing_credentials_is_401_but_health_is_public(make_settings) -> None:  # type: ignore[no-untyped-def]
    async with app_client(make_settings(), authenticated=False) as anon:
        for path in (ME, "/api/v1/agents", "/api/v1/agents/tasks/x", "/api/v1/sessions", "/api/v1/api-keys"):
            resp = await anon.get(path)
            assert_problem(resp, 401)
            assert "ApiKey" in resp.headers["www-authenticate"]
        assert (await anon.get("/health/live")).status_code == 200
        assert (await anon.get("/openapi.json")).status_code == 200


async def test_logout_revokes_the_access_token_and_refresh_family(client: Client, alice: dict[str, Any]) -> None:
    h = bearer(alice["access_token"])
    resp = await client.post("/api/v1/auth/logout", json={"refresh_token": alice["refresh_token"]}, headers=h)
    assert resp.status_code == 204
    assert assert_problem(await client.get(ME, headers=h), 401)["code"] == "token_revoked"
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    ).status_code == 401


async def test_refresh_rotates_and_reuse_revokes_the_family(client: Client, alice: dict[str, Any]) -> None:
    first = alice["refresh_token"]
    rotated = (await client.post("/api/v1/auth/refresh", json={"refresh_token": first})).json()
    assert (
        rotated["refresh_token"] != first
        and (await client.get(ME, headers=bearer(rotated["access_token"]))).status_code == 200
    )
    reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert assert_problem(reuse, 401)["code"] == "invalid_refresh_token"
    # the thief's replay killed the whole family, including the legitimate newer token
    assert (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    ).status_code == 401
    assert_problem(await client.post("/api/v1/auth/refresh", json={"refresh_token": "rt_nonsense"}), 401)


async def test_api_key_lifecycle_revoke_rotate_and_last_used(client: Client, alice: dict[str, Any]) -> None:
    h = bearer(alice["access_token"])
    created = await client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": ["agents:invoke", "tasks:read"]}, headers=h
    )
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith("sk_live_") and len(key["key"]) >= 8 + 43 and key["prefix"] == key["key"][:12]
    listed = (await client.get("/api/v1/api-keys", headers=h)).json()["items"]
    assert all("key" not in k for k in listed) and key["id"] in {k["id"] for k in listed}
    assert (await client.get(ME, headers={"X-API-Key": key["key"]})).status_code == 200
    assert (await client.get(f"/api/v1/api-keys/{key['id']}", headers=h)).json()["last_used_at"] is not None
    rotated = (await client.post(f"/api/v1/api-keys/{key['id']}/rotate", headers=h)).json()
    assert_problem(await client.get(ME, headers={"X-API-Key": key["key"]}), 401)
    assert (await client.get(ME, headers={"X-API-Key": rotated["key"]})).status_code == 200
    assert (await client.delete(f"/api/v1/api-keys/{rotated['id']}", headers=h)).status_code == 204
    assert_problem(await client.get(ME, headers={"X-API-Key": rotated["key"]}), 401)


async def test_expired_key_is_401(client: Client, alice: dict[str, Any]) -> None:
    key = (
        await client.post(
            "/api/v1/api-keys",
            json={"name": "short", "scopes": ["tasks:read"], "expires_in_days": 1},
            headers=bearer(alice["access_token"]),
        )
    ).json()["key"]
    deps = client.app.state.deps
    real = deps.clock
    deps.clock = lambda: real() + timedelta(days=2)
    assert_problem(await client.get(ME, headers={"X-API-Key": key}), 401)


async def test_deactivated_user_loses_keys_and_tokens_at_once(client: Client, alice: dict[str, Any]) -> None:
    admin = {"X-API-Key": await add_user(client.app, "root@example.com", admin=True)}
    alice_id = (await client.get(ME, headers={"X-API-Key": alice["key"]})).json()["user_id"]
    resp = await client.patch(f"/api/v1/users/{alice_id}", json={"is_active": False}, headers=admin)
    assert resp.status_code == 200 and resp.json()["is_active"] is False
    assert_problem(await client.get(ME, headers={"X-API-Key": alice["key"]}), 401)
    assert_problem(await client.get(ME, headers=bearer(alice["access_token"])), 401)
    assert_problem(
        await client.post("/api/v1/auth/token", json={"email": "alice@example.com", "password": "alice password 1"}),
        401,
    )


async def test_scopes_and_minting_rules(client: Client, alice: dict[str, Any]) -> None:
    h = bearer(alice["access_token"])
    reader = (await client.post("/api/v1/api-keys", json={"name": "r", "scopes": ["tasks:read"]}, headers=h)).json()
    resp = await client.post("/api/v1/agents/echo/invoke", json={"message": "x"}, headers={"X-API-Key": reader["key"]})
    body = assert_problem(resp, 403)
    assert body["code"] == "insufficient_scope" and "agents:invoke" in body["detail"]
    for scopes, tier in ((["admin"], "free"), (["audit:read"], "free"), (["agents:invoke"], "pro")):
        resp = await client.post("/api/v1/api-keys", json={"name": "x", "scopes": scopes, "tier": tier}, headers=h)
        assert_problem(resp, 403)
    manager = (
        await client.post("/api/v1/api-keys", json={"name": "m", "scopes": ["api_keys:manage"]}, headers=h)
    ).json()
    resp = await client.post(
        "/api/v1/api-keys", json={"name": "y", "scopes": ["agents:invoke"]}, headers={"X-API-Key": manager["key"]}
    )
    assert_problem(resp, 403)
    admin = {"X-API-Key": await add_user(client.app, "boss@example.com", admin=True, tier="enterprise")}
    ok = await client.post(
        "/api/v1/api-keys", json={"name": "ops", "scopes": ["admin", "audit:read"], "tier": "enterprise"}, headers=admin
    )
    assert ok.status_code == 201
    bad = await client.post("/api/v1/api-keys", json={"name": "", "scopes": [], "tier": "gold", "extra": 1}, headers=h)
    assert {e["path"] for e in assert_problem(bad, 422)["errors"]} == {"$.name", "$.scopes", "$.tier", "$.extra"}


async def test_cross_user_access_is_404(client: Client, alice: dict[str, Any]) -> None:
    task = (
        await client.post(
            "/api/v1/agents/echo/invoke-async", json={"message": "mine"}, headers={"X-API-Key": alice["key"]}
        )
    ).json()["task_id"]
    key_id = (await client.get(ME, headers={"X-API-Key": alice["key"]})).json()["api_key_id"]
    bob = {"X-API-Key": await add_user(client.app, "bob@example.com")}
    assert_problem(await client.get(f"/api/v1/agents/tasks/{task}", headers=bob), 404)
    assert_problem(await client.get(f"/api/v1/api-keys/{key_id}", headers=bob), 404)
    assert_problem(await client.delete(f"/api/v1/api-keys/{key_id}", headers=bob), 404)
    assert_problem(await client.post(f"/api/v1/api-keys/{key_id}/rotate", headers=bob), 404)
    assert (await client.get(ME, headers={"X-API-Key": alice["key"]})).status_code == 200  # untouched
    admin = {"X-API-Key": await add_user(client.app, "ops@example.com", admin=True)}
    assert (await client.get(f"/api/v1/agents/tasks/{task}", headers=admin)).status_code == 200


async def test_users_admin_and_case_insensitive_emails(client: Client) -> None:
    admin = {"X-API-Key": await add_user(client.app, "chief@example.com", admin=True)}
    body = {"email": "New.User@Example.com", "password": "long enough pw"}
    assert_problem(await client.post("/api/v1/users", json=body), 403)
    created = await client.post("/api/v1/users", json=body, headers=admin)
    assert created.status_code == 201 and created.json()["roles"] == ["user"]
    dup = await client.post("/api/v1/users", json={**body, "email": "new.user@EXAMPLE.COM"}, headers=admin)
    assert assert_problem(dup, 409)["code"] == "email_taken"
    assert len((await client.get("/api/v1/users", headers=admin)).json()["items"]) >= 2
    assert_problem(await client.patch("/api/v1/users/nope", json={"is_active": False}, headers=admin), 404)


async def test_wrong_password_costs_the_same_as_unknown_email(client: Client) -> None:
    await add_user(client.app, "timing@example.com", password="the right password")

    async def timed(email: str) -> float:
        t0 = time.perf_counter()
        resp = await client.post("/api/v1/auth/token", json={"email": email, "password": "wrong password"})
        assert resp.status_code == 401 and resp.json()["detail"] == "Incorrect email or password."
        return time.perf_counter() - t0

    known = [await timed("timing@example.com") for _ in range(5)]
    unknown = [await timed("nobody@example.com") for _ in range(5)]
    ratio = statistics.mean(known) / statistics.mean(unknown)
    assert 0.5 < ratio < 2.0, (known, unknown)


async def test_secrets_never_reach_the_logs(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    key = await add_user(client.app, "quiet@example.com", password="very secret password")
    tokens = await login(client, "quiet@example.com", "very secret password")
    await client.post("/api/v1/auth/token", json={"email": "quiet@example.com", "password": "another secret pw"})
    await client.get(ME, headers={"X-API-Key": key})
    await client.get(ME, headers={"X-API-Key": key + "x"})
    await client.app.state.deps.audit.flush()
    out = capsys.readouterr()
    logs = out.out + out.err
    for secret in ("very secret password", "another secret pw", key, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in logs


def test_production_refuses_missing_or_default_secrets(make_settings) -> None:  # type: ignore[no-untyped-def]
    for secret in (None, "secret", "changeme", "short-but-custom"):
        with pytest.raises(ConfigError, match="JWT_SECRET"):
            create_app(make_settings(app_env="production", jwt_secret=secret))
    create_app(make_settings(app_env="production", jwt_secret="a-long-random-production-secret-0123456789"))


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def oidc() -> Iterator[tuple[str, Any, bytes]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    _Jwks.body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", private, public_pem
    server.shutdown()


async def test_external_oidc_tokens_and_the_public_key_as_hmac_secret_attack(make_settings, oidc) -> None:  # type: ignore[no-untyped-def]
    url, private, public_pem = oidc
    settings = make_settings(jwt_jwks_url=url, jwt_external_issuer="https://idp.example", jwt_external_audience="api")
    now = datetime.now(UTC)
    claims = {
        "sub": "ext-1",
        "iss": "https://idp.example",
        "aud": "api",
        "exp": now + timedelta(minutes=5),
        "iat": now,
        "email": "ext@example.com",
        "scope": "agents:invoke tasks:read",
    }
    good = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})
    async with app_client(settings, authenticated=False) as c:
        me = await c.get(ME, headers=bearer(good))
        assert me.status_code == 200 and me.json()["auth_method"] == "oidc"
        assert me.json()["scopes"] == ["agents:invoke", "tasks:read"]
        # HS256 signed with the issuer's public key (the classic algorithm-confusion attack)
        forged = _hs256_with_key(
            public_pem, {**claims, "exp": int(claims["exp"].timestamp()), "iat": int(now.timestamp())}
        )
        assert_problem(await c.get(ME, headers=bearer(forged)), 401)
        wrong_aud = jwt.encode({**claims, "aud": "other"}, private, algorithm="RS256", headers={"kid": "k1"})
        assert_problem(await c.get(ME, headers=bearer(wrong_aud)), 401)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hs256_with_key(key: bytes, claims: dict[str, Any]) -> str:
    """Forge by hand: pyjwt itself refuses to use a public key as an HMAC secret."""
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()) + "." + _b64(json.dumps(claims).encode())
    )
    return signing_input + "." + _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
