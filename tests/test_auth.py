"""Identity against real components (valkey + SQLite, in-process app): tokens, keys, scopes,
ownership, and each attack of issue 3. Every refusal is checked for its status and problem `code`."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from agent_service.app import create_app
from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from agent_service.errors import ConfigError
from tests.support.apps import Client, add_user, app_client
from tests.support.environment import TEST_ENV
from tests.support.identity import (
    KEYS,
    ME,
    PASSWORD,
    TOKEN,
    USERS,
    Person,
    bearer,
    key_header,
    login,
    me,
    mint,
    person,
)
from tests.support.jwks_server import AUDIENCE, ISSUER, JwksServer
from tests.support.problems import assert_problem

SECRET = TEST_ENV["JWT_SECRET"]


# --- helpers ------------------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(sub: str, *, key: Any = SECRET, alg: str = "HS256", **overrides: Any) -> str:
    """A token shaped exactly like the ones the service issues, with `overrides` applied."""
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "nbf": now, "exp": now + 300, "jti": uuid.uuid4().hex,
              "iss": "agent-service", "aud": "agent-service", "roles": ["user"], "scope": "agents:invoke",
              "typ": "access", **overrides}
    return jwt.encode(claims, key, algorithm=alg)


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    head, body, sig = token.split(".")
    return (json.loads(base64.urlsafe_b64decode(head + "==")), json.loads(base64.urlsafe_b64decode(body + "==")),
            sig)


def assemble(header: dict[str, Any], payload: dict[str, Any], sig: str) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{sig}"


def refused(resp: httpx.Response, status: int, code: str, case: object = None) -> dict[str, object]:
    """assert_problem, naming the case that failed when it runs in a loop."""
    try:
        return assert_problem(resp, status, code)
    except AssertionError as exc:
        raise AssertionError(f"case {case!r}: {exc}") from None


@pytest.fixture
async def alice(client: Client) -> Person:
    return await person(client, "alice")


@pytest.fixture
async def bob(client: Client) -> Person:
    return await person(client, "bob")


@pytest.fixture
async def admin(client: Client) -> Person:
    return await person(client, "root", admin=True)


# --- sign-in --------------------------------------------------------------------------------------

async def test_login_issues_a_working_jwt_and_me_describes_the_caller(client: Client, alice: Person) -> None:
    t = alice.tokens
    assert t["token_type"] == "bearer" and t["expires_in"] > 0 and t["refresh_token"]
    claims = jwt.decode(t["access_token"], SECRET, algorithms=["HS256"], audience="agent-service",
                        issuer="agent-service")
    assert {"sub", "iat", "nbf", "exp", "jti", "iss", "aud", "roles"} <= set(claims)
    assert claims["sub"] == alice.user_id
    who = await me(client, alice.jwt)
    assert (who["email"], who["auth_method"], who["api_key_id"]) == ("alice@example.com", "jwt", None)
    assert "agents:invoke" in who["scopes"] and "admin" not in who["scopes"]
    who = await me(client, alice.api_key)
    assert who["auth_method"] == "api_key" and who["api_key_id"] and who["tier"] == "free"


async def test_login_with_the_oauth2_password_form(client: Client, alice: Person) -> None:
    resp = await client.post(TOKEN, data={"grant_type": "password", "username": alice.email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    assert (await me(client, bearer(resp.json()["access_token"])))["user_id"] == alice.user_id
    wrong = await client.post(TOKEN, data={"grant_type": "password", "username": alice.email, "password": "nope"})
    assert_problem(wrong, 401, "invalid_credentials")


async def test_login_form_with_another_grant_type_is_422(client: Client, alice: Person) -> None:
    for grant in ("client_credentials", "refresh_token", "authorization_code", "", "PASSWORD"):
        resp = await client.post(TOKEN, data={"grant_type": grant, "username": alice.email, "password": PASSWORD})
        refused(resp, 422, "validation_error", grant)


async def test_wrong_password_and_unknown_email_look_the_same_and_take_comparable_time(
    client: Client, alice: Person
) -> None:
    wrong = {"email": alice.email, "password": "not the password"}
    unknown = {"email": "nobody-here@example.com", "password": "not the password"}
    a = assert_problem(await client.post(TOKEN, json=wrong), 401, "invalid_credentials")
    b = assert_problem(await client.post(TOKEN, json=unknown), 401, "invalid_credentials")
    assert (a["title"], a["detail"]) == (b["title"], b["detail"])

    async def timed(body: dict[str, str]) -> float:
        started = time.perf_counter()
        resp = await client.post(TOKEN, json=body)
        elapsed = time.perf_counter() - started
        assert resp.status_code == 401
        return elapsed

    times: dict[str, list[float]] = {"wrong": [], "unknown": []}
    for _ in range(5):  # interleaved, so drift in machine load hits both alike
        times["wrong"].append(await timed(wrong))
        times["unknown"].append(await timed(unknown))
    ratio = statistics.mean(times["wrong"]) / statistics.mean(times["unknown"])
    assert 0.5 <= ratio <= 2.0, times
    # both really ran scrypt (tens of ms), not a fast path for the unknown email
    assert min(times["unknown"]) > 0.005, times


async def test_malformed_login_bodies_are_4xx(client: Client) -> None:
    assert_problem(await client.post(TOKEN, json={"email": "x@example.com"}), 422, "validation_error")
    assert_problem(await client.post(TOKEN, content=b"{", headers={"content-type": "application/json"}), 400,
                   "malformed_json")
    resp = await client.post(TOKEN, json={"email": "x@example.com", "password": "p" * 2000})
    assert_problem(resp, 422, "validation_error")


# --- JWT attacks -----------------------------------------------------------------------------------

async def test_alg_none_is_rejected(client: Client, alice: Person) -> None:
    header, payload, real_sig = split(alice.tokens["access_token"])
    for alg in ("none", "None", "NONE", "nOnE"):
        for sig in ("", real_sig):
            forged = assemble({**header, "alg": alg}, payload, sig)
            refused(await client.get(ME, headers=bearer(forged)), 401, "invalid_token", (alg, sig))
    # pyjwt's own unsecured encoding, too
    unsecured = jwt.encode({**payload, "jti": uuid.uuid4().hex}, None, algorithm="none")  # type: ignore[arg-type]
    assert_problem(await client.get(ME, headers=bearer(unsecured)), 401, "invalid_token")


async def test_a_forged_token_with_the_right_secret_is_accepted(client: Client, alice: Person) -> None:
    """Control for the attack tests below: `forge` makes tokens the service takes, so each
    rejection below is due to the one claim that was changed."""
    assert (await me(client, bearer(forge(alice.user_id))))["user_id"] == alice.user_id


async def test_expired_token_is_401(client: Client, alice: Person) -> None:
    now = int(time.time())
    token = forge(alice.user_id, iat=now - 3600, nbf=now - 3600, exp=now - 60)
    assert_problem(await client.get(ME, headers=bearer(token)), 401, "token_expired")


async def test_not_yet_valid_token_is_401(client: Client, alice: Person) -> None:
    now = int(time.time())
    token = forge(alice.user_id, nbf=now + 600, exp=now + 1200)
    assert_problem(await client.get(ME, headers=bearer(token)), 401, "invalid_token")


async def test_wrong_audience_is_401(client: Client, alice: Person) -> None:
    for aud in ("someone-else", ["someone-else"], "AGENT-SERVICE", ""):
        refused(await client.get(ME, headers=bearer(forge(alice.user_id, aud=aud))), 401, "invalid_token", aud)


async def test_wrong_issuer_is_401(client: Client, alice: Person) -> None:
    for iss in ("evil-issuer", "https://idp.example.test/", "agent-service ", ""):
        refused(await client.get(ME, headers=bearer(forge(alice.user_id, iss=iss))), 401, "invalid_token", iss)


async def test_token_missing_a_required_claim_is_401(client: Client, alice: Person) -> None:
    for missing in ("exp", "jti", "sub", "nbf", "iat", "aud", "iss", "typ"):
        _, payload, _ = split(forge(alice.user_id))
        del payload[missing]
        token = jwt.encode(payload, SECRET, algorithm="HS256")
        refused(await client.get(ME, headers=bearer(token)), 401, "invalid_token", missing)


async def test_token_signed_with_another_secret_is_401(client: Client, alice: Person) -> None:
    token = forge(alice.user_id, key="another-secret-of-sufficient-length-0123456789")
    assert_problem(await client.get(ME, headers=bearer(token)), 401, "invalid_token")


async def test_tampered_payload_is_401(client: Client, alice: Person, admin: Person) -> None:
    header, payload, sig = split(alice.tokens["access_token"])
    for changed in ({"sub": admin.user_id}, {"roles": ["user", "admin"], "scope": "admin"},
                    {"exp": payload["exp"] + 86400}, {"jti": "other"}):
        forged = assemble(header, {**payload, **changed}, sig)
        refused(await client.get(ME, headers=bearer(forged)), 401, "invalid_token", changed)
    # a flipped bit in the signature, too
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    refused(await client.get(ME, headers=bearer(assemble(header, payload, flipped))), 401, "invalid_token")
    assert (await me(client, alice.jwt))["user_id"] == alice.user_id  # the genuine token still works


async def test_refresh_token_or_api_key_as_a_bearer_is_401(client: Client, alice: Person) -> None:
    assert_problem(await client.get(ME, headers=bearer(alice.tokens["refresh_token"])), 401, "invalid_token")
    assert_problem(await client.get(ME, headers=bearer(alice.key)), 401, "invalid_token")
    not_access = forge(alice.user_id, typ="refresh")
    assert_problem(await client.get(ME, headers=bearer(not_access)), 401, "invalid_token")


async def test_token_of_an_unknown_user_is_401(client: Client) -> None:
    assert_problem(await client.get(ME, headers=bearer(forge("no-such-user"))), 401, "inactive_user")


# --- external issuer (JWKS) --------------------------------------------------------------------------

async def test_rs256_token_from_the_external_issuer_is_accepted(oidc_client: Client, idp: JwksServer) -> None:
    who = await me(oidc_client, bearer(idp.sign()))
    assert who["auth_method"] == "oidc" and who["user_id"] == "oidc:ext-user-1"
    assert who["email"] == "ext@idp.example.test" and "admin" not in who["scopes"]
    assert idp.requests >= 1  # the key really came over HTTP from the JWKS endpoint


async def test_hs256_signed_with_the_issuers_public_key_is_401(oidc_client: Client, idp: JwksServer) -> None:
    # with the external issuer's claims, and with ours (as if the attacker hoped to pass as a local user)
    for claims in ({}, {"iss": "agent-service", "aud": "agent-service", "typ": "access"}):
        forged = idp.hs256_with_public_key(**claims)
        refused(await oidc_client.get(ME, headers=bearer(forged)), 401, "invalid_token", claims)
    assert (await me(oidc_client, bearer(idp.sign())))["auth_method"] == "oidc"  # the issuer still works


async def test_external_token_with_bad_claims_is_401(oidc_client: Client, idp: JwksServer) -> None:
    now = int(time.time())
    for claims, code in (({"aud": "agent-service"}, "invalid_token"), ({"iss": "agent-service"}, "invalid_token"),
                         ({"exp": now - 10}, "token_expired"), ({"nbf": now + 600}, "invalid_token")):
        refused(await oidc_client.get(ME, headers=bearer(idp.sign(**claims))), 401, code, claims)


async def test_external_claims_of_odd_types_are_never_a_500(oidc_client: Client, idp: JwksServer) -> None:
    for claims in ({"roles": 5}, {"roles": "admin"}, {"roles": {"admin": 1}}, {"roles": [None, 3, ["admin"]]},
                   {"email": None}, {"email": 7}, {"scope": 5}, {"scope": ["admin"]}):
        resp = await oidc_client.get(ME, headers=bearer(idp.sign(**claims)))
        assert resp.status_code == 200, (claims, resp.text)
        who = resp.json()
        assert who["roles"] == ["user"] and "admin" not in who["scopes"], (claims, who)
        assert who["email"] in ("ext@idp.example.test", "ext-user-1"), (claims, who)
    for claims in ({"sub": 5}, {"jti": 5}, {"exp": "soon"}, {"aud": 5}):
        refused(await oidc_client.get(ME, headers=bearer(idp.sign(**claims))), 401, "invalid_token", claims)
    # an issuer-granted admin role is honoured, with only the scopes the token asks for
    who = await me(oidc_client, bearer(idp.sign(roles=["admin"], scope="tasks:read audit:read bogus")))
    assert who["roles"] == ["admin"] and who["scopes"] == ["tasks:read", "audit:read"]


async def test_an_unreachable_jwks_endpoint_is_503_not_500(make_settings: Callable[..., Settings],
                                                          idp: JwksServer) -> None:
    settings = make_settings(jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json", jwt_external_issuer=ISSUER,
                             jwt_external_audience=AUDIENCE)
    async with app_client(settings) as c:
        refused(await c.get(ME, headers=bearer(idp.sign())), 503, "service_unavailable")
        assert (await c.get(ME)).status_code == 200  # local API keys do not depend on the issuer


async def test_rs256_token_signed_by_another_key_is_401(oidc_client: Client, idp: JwksServer) -> None:
    impostor = JwksServer()  # never started: only its private key is used
    token = jwt.encode(idp.claims(), impostor.private_key, algorithm="RS256", headers={"kid": "test-key-1"})
    assert_problem(await oidc_client.get(ME, headers=bearer(token)), 401, "invalid_token")
    unknown_kid = jwt.encode(idp.claims(), idp.private_key, algorithm="RS256", headers={"kid": "nope"})
    assert_problem(await oidc_client.get(ME, headers=bearer(unknown_kid)), 401, "invalid_token")


async def test_rs256_token_without_a_configured_issuer_is_401(client: Client, idp: JwksServer) -> None:
    assert_problem(await client.get(ME, headers=bearer(idp.sign())), 401, "invalid_token")


# --- logout and refresh ----------------------------------------------------------------------------------

async def test_revoked_jti_after_logout_is_401_at_once(client: Client, alice: Person) -> None:
    assert (await client.post("/api/v1/auth/logout", headers=alice.jwt,
                              json={"refresh_token": alice.tokens["refresh_token"]})).status_code == 204
    assert_problem(await client.get(ME, headers=alice.jwt), 401, "token_revoked")
    assert_problem(await client.post("/api/v1/auth/logout", headers=alice.jwt), 401, "token_revoked")
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.tokens["refresh_token"]})
    assert_problem(resp, 401, "invalid_refresh_token")
    # the entry lives in Redis only as long as the token would have
    _, payload, _ = split(alice.tokens["access_token"])
    ttl = await client.app.state.deps.redis.ttl(f"{client.app.state.deps.prefix}auth:revoked:{payload['jti']}")
    assert 0 < ttl <= payload["exp"] - int(time.time()) + 1
    # other sessions and the API key are unaffected
    assert (await me(client, alice.api_key))["user_id"] == alice.user_id
    again = await login(client, alice.email, PASSWORD)
    assert (await me(client, bearer(again["access_token"])))["user_id"] == alice.user_id


async def test_refresh_works_once_and_reuse_revokes_the_family(client: Client, alice: Person) -> None:
    first = alice.tokens["refresh_token"]
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] != first and second["access_token"] != alice.tokens["access_token"]
    assert (await me(client, bearer(second["access_token"])))["user_id"] == alice.user_id
    # replaying the used token: refused, and the whole family dies with it
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert_problem(resp, 401, "invalid_refresh_token")
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(resp, 401, "invalid_refresh_token")
    # an unrelated session (another family) still refreshes
    other = await login(client, alice.email, PASSWORD)
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert resp.status_code == 200, resp.text


async def test_a_replay_racing_the_rotation_still_ends_the_family(client: Client, alice: Person) -> None:
    """The same refresh token presented twice at once (a thief and the user): at most one gets a
    new pair, the other is refused, and whatever refresh token was handed out is dead too."""
    for _ in range(4):
        token = (await login(client, alice.email, PASSWORD))["refresh_token"]
        answers = await asyncio.gather(*[client.post("/api/v1/auth/refresh", json={"refresh_token": token})
                                         for _ in range(2)])
        assert sorted(r.status_code for r in answers) in ([200, 401], [401, 401]), [r.text for r in answers]
        for r in answers:
            if r.status_code == 401:
                refused(r, 401, "invalid_refresh_token")
            else:
                resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": r.json()["refresh_token"]})
                refused(resp, 401, "invalid_refresh_token")


async def test_refresh_with_junk_or_expired_token_is_401(client: Client, alice: Person) -> None:
    for junk in ("rt_nope", "x" * 512):
        assert_problem(await client.post("/api/v1/auth/refresh", json={"refresh_token": junk}), 401,
                       "invalid_refresh_token")
    assert_problem(await client.post("/api/v1/auth/refresh", json={"refresh_token": ""}), 422, "validation_error")
    deps = client.app.state.deps
    later = datetime.now(UTC) + timedelta(seconds=deps.settings.refresh_token_ttl + 60)
    deps.clock = lambda: later
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.tokens["refresh_token"]})
    assert_problem(resp, 401, "invalid_refresh_token")


# --- API keys --------------------------------------------------------------------------------------------

async def test_a_key_after_revoke_is_401(client: Client, alice: Person) -> None:
    created = await mint(client, alice.jwt, ["agents:invoke", "tasks:read"])
    assert created["key"].startswith("sk_live_") and created["prefix"] == created["key"][:12]
    assert (await me(client, key_header(created["key"])))["api_key_id"] == created["id"]
    assert (await client.delete(f"{KEYS}/{created['id']}", headers=alice.jwt)).status_code == 204
    assert_problem(await client.get(ME, headers=key_header(created["key"])), 401, "invalid_api_key")
    assert (await client.delete(f"{KEYS}/{created['id']}", headers=alice.jwt)).status_code == 204  # harmless
    listed = (await client.get(KEYS, headers=alice.jwt)).json()["items"]
    assert all("key" not in k for k in listed)
    assert next(k for k in listed if k["id"] == created["id"])["revoked_at"]


async def test_a_key_after_rotate_is_401_and_the_new_one_works(client: Client, alice: Person) -> None:
    old = await mint(client, alice.jwt, ["tasks:read", "agents:invoke"], name="ci", tier="free")
    resp = await client.post(f"{KEYS}/{old['id']}/rotate", headers=alice.jwt)
    assert resp.status_code == 201, resp.text
    new = resp.json()
    assert new["key"] != old["key"] and new["id"] != old["id"]
    assert (new["name"], new["scopes"], new["tier"]) == ("ci", old["scopes"], "free")
    assert_problem(await client.get(ME, headers=key_header(old["key"])), 401, "invalid_api_key")
    assert (await me(client, key_header(new["key"])))["api_key_id"] == new["id"]
    # the rotated-away key cannot be rotated again
    assert_problem(await client.post(f"{KEYS}/{old['id']}/rotate", headers=alice.jwt), 404, "api_key_not_found")


async def test_a_key_past_its_expiry_is_401(client: Client, alice: Person) -> None:
    created = await mint(client, alice.jwt, ["tasks:read"], expires_in_days=1)
    assert created["expires_at"]
    assert (await me(client, key_header(created["key"])))["api_key_id"] == created["id"]
    later = datetime.now(UTC) + timedelta(days=1, minutes=1)
    client.app.state.deps.clock = lambda: later
    assert_problem(await client.get(ME, headers=key_header(created["key"])), 401, "invalid_api_key")


async def test_last_used_at_is_set_after_a_key_is_used(client: Client, alice: Person) -> None:
    created = await mint(client, alice.jwt, ["tasks:read"])
    assert created["last_used_at"] is None
    before = (await client.get(f"{KEYS}/{created['id']}", headers=alice.jwt)).json()
    assert before["last_used_at"] is None  # reading it with a JWT is not using it
    await me(client, key_header(created["key"]))
    after = (await client.get(f"{KEYS}/{created['id']}", headers=alice.jwt)).json()
    assert after["last_used_at"] is not None
    used = datetime.fromisoformat(after["last_used_at"])
    assert abs((datetime.now(UTC) - used).total_seconds()) < 60


async def test_a_deactivated_users_key_and_jwt_are_401(client: Client, alice: Person, admin: Person) -> None:
    resp = await client.patch(f"{USERS}/{alice.user_id}", json={"is_active": False}, headers=admin.api_key)
    assert resp.status_code == 200 and resp.json()["is_active"] is False, resp.text
    assert_problem(await client.get(ME, headers=alice.api_key), 401, "invalid_api_key")
    assert_problem(await client.get(ME, headers=alice.jwt), 401, "inactive_user")
    assert_problem(await client.post(TOKEN, json={"email": alice.email, "password": PASSWORD}), 401,
                   "invalid_credentials")
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.tokens["refresh_token"]})
    assert_problem(resp, 401, "invalid_refresh_token")
    # reactivated: the key works again, and a fresh login does
    resp = await client.patch(f"{USERS}/{alice.user_id}", json={"is_active": True}, headers=admin.api_key)
    assert resp.status_code == 200
    assert (await me(client, alice.api_key))["user_id"] == alice.user_id
    await login(client, alice.email, PASSWORD)


# --- the Authorization header ---------------------------------------------------------------------------

async def test_malformed_authorization_header_is_401(client: Client, alice: Person) -> None:
    valid = alice.tokens["access_token"]
    for value in ("Basic x", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", f"Bearer {valid} extra",
                  "Token abc", f"Bearer{valid}", f"JWT {valid}", "", "   "):
        resp = await client.get(ME, headers={"Authorization": value})
        refused(resp, 401, "invalid_authorization", value)
        assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_junk_bearer_tokens_are_401(client: Client) -> None:
    for token in ("a", "a.b", "a.b.c", "..", "e30.e30.", "e30.e30.e30", "eyJhbGciOiJIUzI1NiJ9..", "%%%.%%%.%%%",
                  "W10.e30.", "\u00e9\u00e9\u00e9"):
        resp = await client.get(ME, headers=[(b"Authorization", f"Bearer {token}".encode("latin-1"))])
        refused(resp, 401, "invalid_token", token)


async def test_bearer_scheme_is_case_insensitive(client: Client, alice: Person) -> None:
    for scheme in ("bearer", "BEARER", "Bearer", "bEaReR"):
        resp = await client.get(ME, headers={"Authorization": f"{scheme} {alice.tokens['access_token']}"})
        assert resp.status_code == 200 and resp.json()["user_id"] == alice.user_id, (scheme, resp.text)


async def test_10_kb_credentials_are_401(client: Client, alice: Person) -> None:
    big = "A" * 10_240
    assert_problem(await client.get(ME, headers={"Authorization": f"Bearer {big}"}), 401, "invalid_authorization")
    padded_jwt = alice.tokens["access_token"] + "A" * 10_240
    assert_problem(await client.get(ME, headers=bearer(padded_jwt)), 401, "invalid_authorization")
    assert_problem(await client.get(ME, headers={"X-API-Key": "sk_live_" + big}), 401, "invalid_api_key")
    assert_problem(await client.get(ME, headers={"X-API-Key": big}), 401, "invalid_api_key")


async def test_unknown_or_malformed_api_keys_are_401(client: Client, alice: Person) -> None:
    for key in ("sk_live_short", "sk_live_" + "A" * 43, "nope", "", "sk_test_" + alice.key[8:],
                "sk_live_" + "!" * 43, alice.key + "A", alice.key[:-1], alice.key.upper()):
        refused(await client.get(ME, headers={"X-API-Key": key}), 401, "invalid_api_key", key)


async def test_a_bearer_and_an_api_key_together_are_refused_naming_the_conflict(client: Client, alice: Person) -> None:
    now = int(time.time())
    expired = forge(alice.user_id, iat=now - 99, nbf=now - 99, exp=now - 9)
    good = (await login(client, alice.email, PASSWORD))["access_token"]
    # neither one silently wins: not a bad header over a good key, nor a good token over a bad key
    for header, key in (("Bearer garbage", alice.key), ("Basic x", alice.key), (f"Bearer {expired}", alice.key),
                        ("Bearer", alice.key), (f"Bearer {good}", "sk_live_wrong"), (f"Bearer {good}", alice.key)):
        resp = await client.get(ME, headers={"Authorization": header, "X-API-Key": key})
        body = refused(resp, 400, "conflicting_credentials", header)
        assert "X-API-Key" in str(body["detail"]) and "Authorization" in str(body["detail"])
    assert (await me(client, alice.api_key))["user_id"] == alice.user_id  # the key alone is fine
    assert (await me(client, {"Authorization": f"Bearer {good}"}))["user_id"] == alice.user_id
    # and on a public route both are ignored
    public = await client.get("/health/live", headers={"Authorization": "Bearer x", "X-API-Key": "y"})
    assert public.status_code == 200


async def test_missing_credentials_are_401_with_www_authenticate(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as anon:
        for method, path in (
            ("GET", ME), ("POST", "/api/v1/auth/logout"), ("GET", KEYS), ("POST", KEYS), ("GET", f"{KEYS}/x"),
            ("DELETE", f"{KEYS}/x"), ("POST", f"{KEYS}/x/rotate"), ("GET", USERS), ("POST", USERS),
            ("PATCH", f"{USERS}/x"), ("GET", "/api/v1/agents/tasks"), ("GET", "/api/v1/agents/tasks/abc"),
            ("POST", "/api/v1/agents/echo/invoke-async"), ("POST", "/api/v1/agents/invoke"), ("GET", "/api/v1/agents"),
        ):
            resp = await anon.request(method, path, json={"message": "hi"} if method in ("POST", "PATCH") else None)
            refused(resp, 401, "unauthorized", (method, path))
            assert resp.headers["www-authenticate"].startswith("Bearer"), path


async def test_health_and_docs_stay_public(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as anon:
        assert (await anon.get("/health/live")).status_code == 200
        assert (await anon.get("/openapi.json")).status_code == 200


# --- scopes, ownership, minting ----------------------------------------------------------------------------

async def test_a_tasks_read_key_cannot_invoke(client: Client, alice: Person) -> None:
    reader = await mint(client, alice.jwt, ["tasks:read"])
    resp = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "hi"},
                             headers=key_header(reader["key"]))
    body = assert_problem(resp, 403, "insufficient_scope")
    assert "agents:invoke" in str(body["detail"])
    assert (await client.get("/api/v1/agents/tasks", headers=key_header(reader["key"]))).status_code == 200
    resp = await client.get(KEYS, headers=key_header(reader["key"]))
    assert "api_keys:manage" in str(assert_problem(resp, 403, "insufficient_scope")["detail"])


async def test_tasks_of_another_user_are_404_but_admins_see_them(
    client: Client, alice: Person, bob: Person, admin: Person
) -> None:
    resp = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "mine"}, headers=alice.api_key)
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    url = f"/api/v1/agents/tasks/{task_id}"
    assert (await client.get(url, headers=alice.api_key)).status_code == 200
    assert (await client.get(url, headers=alice.jwt)).status_code == 200
    for headers in (bob.api_key, bob.jwt):
        assert_problem(await client.get(url, headers=headers), 404, "task_not_found")
        assert_problem(await client.post(f"{url}/cancel", headers=headers), 404, "task_not_found")
    missing = assert_problem(await client.get("/api/v1/agents/tasks/does-not-exist", headers=bob.api_key), 404)
    assert missing["code"] == "task_not_found"  # an unknown id and someone else's look alike
    listed = (await client.get("/api/v1/agents/tasks", headers=bob.api_key)).json()["items"]
    assert task_id not in {t["task_id"] for t in listed}
    for headers in (admin.api_key, admin.jwt):
        resp = await client.get(url, headers=headers)
        assert resp.status_code == 200 and resp.json()["task_id"] == task_id


async def test_api_keys_of_another_user_are_404(client: Client, alice: Person, bob: Person, admin: Person) -> None:
    alice_key_id = (await me(client, alice.api_key))["api_key_id"]
    for headers in (bob.api_key, bob.jwt):
        assert_problem(await client.get(f"{KEYS}/{alice_key_id}", headers=headers), 404, "api_key_not_found")
        assert_problem(await client.delete(f"{KEYS}/{alice_key_id}", headers=headers), 404, "api_key_not_found")
        assert_problem(await client.post(f"{KEYS}/{alice_key_id}/rotate", headers=headers), 404, "api_key_not_found")
        listed = (await client.get(KEYS, headers=headers)).json()["items"]
        assert alice_key_id not in {k["id"] for k in listed}
    assert (await me(client, alice.api_key))["api_key_id"] == alice_key_id  # untouched
    assert (await client.get(f"{KEYS}/{alice_key_id}", headers=admin.api_key)).status_code == 200


async def test_non_admin_cannot_mint_admin_only_scopes(client: Client, alice: Person) -> None:
    for scopes in (["admin"], ["audit:read"], ["tasks:read", "audit:read"]):
        for headers in (alice.jwt, alice.api_key):
            resp = await client.post(KEYS, json={"name": "x", "scopes": scopes}, headers=headers)
            body = refused(resp, 403, "scope_not_grantable", scopes)
            assert scopes[-1] in str(body["detail"])


async def test_a_manage_only_key_cannot_mint_broader_scopes(client: Client, alice: Person) -> None:
    manager = await mint(client, alice.jwt, ["api_keys:manage"])
    resp = await client.post(KEYS, json={"name": "x", "scopes": ["agents:invoke"]}, headers=key_header(manager["key"]))
    body = assert_problem(resp, 403, "scope_not_grantable")
    assert "agents:invoke" in str(body["detail"])
    # what it holds it may pass on
    await mint(client, key_header(manager["key"]), ["api_keys:manage"])


async def test_a_manage_only_key_cannot_widen_itself_by_rotating_a_broader_key(client: Client, alice: Person) -> None:
    manager = await mint(client, alice.jwt, ["api_keys:manage"])
    broad = await mint(client, alice.jwt, ["agents:invoke", "tasks:read"])
    resp = await client.post(f"{KEYS}/{broad['id']}/rotate", headers=key_header(manager["key"]))
    assert_problem(resp, 403, "scope_not_grantable")
    assert (await me(client, key_header(broad["key"])))["api_key_id"] == broad["id"]  # not rotated
    # the owner with a JWT (holding those scopes) may rotate it
    assert (await client.post(f"{KEYS}/{broad['id']}/rotate", headers=alice.jwt)).status_code == 201


async def test_tiers_nobody_mints_above_their_own_tier_admins_included(client: Client, alice: Person,
                                                                      admin: Person) -> None:
    for tier in ("pro", "enterprise"):
        resp = await client.post(KEYS, json={"name": "x", "scopes": ["tasks:read"], "tier": tier}, headers=alice.jwt)
        assert_problem(resp, 403, "tier_not_grantable")
    assert (await mint(client, alice.jwt, ["tasks:read"], tier="free"))["tier"] == "free"
    # a free admin is free too: a key's effective tier can never exceed its user's
    resp = await client.post(KEYS, json={"name": "x", "scopes": ["tasks:read"], "tier": "pro"}, headers=admin.jwt)
    assert_problem(resp, 403, "tier_not_grantable")
    pro = await person(client, "pro-admin", admin=True, tier="pro")
    created = await mint(client, pro.jwt, ["tasks:read", "audit:read", "admin"], tier="pro")
    assert created["tier"] == "pro" and "admin" in created["scopes"]
    who = await me(client, key_header(created["key"]))
    assert who["tier"] == "pro" and who["api_key_id"] == created["id"]


async def test_a_demoted_admins_key_loses_admin_powers(client: Client, alice: Person, admin: Person) -> None:
    other_admin = await person(client, "boss", admin=True)
    assert (await client.get(USERS, headers=other_admin.api_key)).status_code == 200
    resp = await client.patch(f"{USERS}/{other_admin.user_id}", json={"roles": ["user"]}, headers=admin.api_key)
    assert resp.status_code == 200 and resp.json()["roles"] == ["user"]
    for headers in (other_admin.api_key, other_admin.jwt):
        assert_problem(await client.get(USERS, headers=headers), 403, "insufficient_scope")
        resp = await client.post(USERS, json={"email": "sneaky@example.com", "password": "long enough"},
                                 headers=headers)
        assert_problem(resp, 403, "insufficient_scope")
    assert "admin" not in (await me(client, other_admin.api_key))["scopes"]


# --- users -------------------------------------------------------------------------------------------------

async def test_admin_creates_users_others_cannot_and_emails_are_unique_ignoring_case(
    client: Client, alice: Person, admin: Person
) -> None:
    body = {"email": "New.Person@Example.com", "password": "a fine password", "name": "New"}
    for headers in (alice.jwt, alice.api_key):
        assert_problem(await client.post(USERS, json=body, headers=headers), 403, "insufficient_scope")
        assert_problem(await client.get(USERS, headers=headers), 403, "insufficient_scope")
        assert_problem(await client.patch(f"{USERS}/{alice.user_id}", json={"roles": ["admin"]}, headers=headers),
                       403, "insufficient_scope")
    resp = await client.post(USERS, json=body, headers=admin.jwt)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["roles"] == ["user"] and created["is_active"] and "password" not in json.dumps(created)
    dup = await client.post(USERS, json={**body, "email": "new.person@example.COM"}, headers=admin.api_key)
    assert_problem(dup, 409, "email_taken")
    # the new user can sign in with any casing of the email
    tokens = await login(client, "NEW.PERSON@example.com", "a fine password")
    assert (await me(client, bearer(tokens["access_token"])))["user_id"] == created["id"]
    listed = (await client.get(USERS, headers=admin.api_key)).json()["items"]
    assert created["id"] in {u["id"] for u in listed}
    assert_problem(await client.patch(f"{USERS}/nope", json={"is_active": False}, headers=admin.jwt), 404,
                   "user_not_found")


# --- secrets and start-up ------------------------------------------------------------------------------------

async def test_passwords_tokens_and_keys_never_reach_the_logs(settings: Settings,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # the app is built inside the test so its JSON log handler writes into capsys
    async with app_client(settings) as c:
        password = "hunter2 but much longer " + secrets.token_hex(8)
        key = await add_user(c.app, "logged@example.com", password=password)
        tokens = await login(c, "logged@example.com", password)
        assert (await c.get(ME, headers=key_header(key))).status_code == 200
        assert (await c.get(ME, headers=bearer(tokens["access_token"]))).status_code == 200
        assert_problem(await c.post(TOKEN, json={"email": "logged@example.com", "password": password + "x"}), 401)
        assert_problem(await c.post(TOKEN, data={"username": "logged@example.com", "password": password + "y"}), 401)
        assert_problem(await c.get(ME, headers=bearer(tokens["access_token"] + "x")), 401)
        assert_problem(await c.get(ME, headers=key_header(key[:-1] + ("A" if key[-1] != "A" else "B"))), 401)
        refreshed = (await c.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).json()
        assert (await c.post("/api/v1/auth/logout", headers=bearer(refreshed["access_token"]),
                             json={"refresh_token": refreshed["refresh_token"]})).status_code == 204
    out = capsys.readouterr()
    logs = out.out + out.err
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "http.request" for line in lines), logs[-2000:]  # we did capture the logs
    assert any(line.get("event") == "auth.failed" for line in lines), logs[-2000:]
    for secret in (password, key, key[8:], tokens["access_token"], tokens["refresh_token"],
                   tokens["access_token"].split(".")[2], refreshed["access_token"], refreshed["refresh_token"]):
        assert secret not in logs


@pytest.mark.parametrize("secret", [None, "", "secret", "SECRET", "changeme", "your-256-bit-secret",
                                    "short-random-9f3k"])
def test_production_refuses_to_start_without_a_strong_secret(make_settings: Callable[..., Settings],
                                                             secret: str | None) -> None:
    with pytest.raises(ConfigError):
        create_app(make_settings(app_env="production", jwt_secret=secret))


def test_production_starts_with_a_strong_secret(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(app_env="production", jwt_secret=secrets.token_urlsafe(40),
                                   database_url="postgresql://app@127.0.0.1:5432/app"))
    assert app is not None


async def test_odd_input_to_identity_routes_is_a_4xx_problem(client: Client) -> None:
    """A sweep of odd inputs to the identity routes: 4xx problems only."""
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", TOKEN, {"json": [1, 2]}),
        ("POST", TOKEN, {"content": b"grant_type=password&username=%ff", "headers": {
            "content-type": "application/x-www-form-urlencoded"}}),
        ("POST", "/api/v1/auth/refresh", {"json": {"refresh_token": 5}}),
        ("POST", KEYS, {"json": {"name": "x", "scopes": ["root"]}}),
        ("POST", KEYS, {"json": {"name": "x", "scopes": ["tasks:read"], "expires_in_days": 0}}),
        ("GET", f"{KEYS}/{'x' * 5000}", {}),
        ("POST", f"{KEYS}/{'x' * 5000}/rotate", {}),
        ("GET", f"{KEYS}?limit=0", {}),
        ("GET", f"{KEYS}?cursor=%%%", {}),
        ("POST", "/api/v1/auth/logout", {"json": {"refresh_token": None, "x": 1}}),
    ]
    for method, path, kw in cases:
        resp = await client.request(method, path, **kw)
        assert 400 <= resp.status_code < 500, (method, path, resp.status_code, resp.text)
        assert resp.headers["content-type"] == "application/problem+json", (path, resp.text)
