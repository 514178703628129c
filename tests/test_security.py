"""Attacks on the identity and limits hardening, in process (real valkey and SQL): quotas charged per
user whatever credential is used, the live-key cap (also under concurrent mints), no rotating of
another user's key, external (OIDC) principals, the per-IP limit on bad credentials, and the
`sessions` scope a `session_id` needs. The tier, audit and header checks against real uvicorn are
in test_security_live.py, the login throttle in test_login_throttle.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from agent_service.config import Settings
from agent_service.identity import accounts
from agent_service.identity import repository as identity_repo
from agent_service.identity.schemas import USER_SCOPES
from tests.support.apps import Client, add_user, app_client
from tests.support.identity import KEYS, ME, PASSWORD, bearer, key_header, login, me, mint, person
from tests.support.jwks_server import KID, JwksServer
from tests.support.problems import assert_problem
from tests.support.waiting import wait_for

AGENTS = "/api/v1/agents"


async def _user_with_two_keys(c: Client, email: str) -> tuple[str, str]:
    """Two API keys of one fresh user, minted without HTTP so no request is charged yet."""
    first = await add_user(c.app, email, password=PASSWORD)
    deps = c.app.state.deps
    user = await identity_repo.user_by_email(deps.db, email)
    assert user is not None
    second = await accounts.bootstrap_key(deps, user.id, name="second", scopes=USER_SCOPES, tier="free")
    return first, second


# --- 1. quotas are the user's, not the key's ------------------------------------------------------------

@pytest.mark.sqlite_only  # the limiter is Redis's
async def test_more_keys_do_not_multiply_the_quota(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(rate_limit_free=4), authenticated=False) as c:
        first, second = await _user_with_two_keys(c, "greedy@example.com")
        token = (await login(c, "greedy@example.com", PASSWORD))["access_token"]  # login is the IP's bucket
        creds = [key_header(first), key_header(second), bearer(token), key_header(second)]
        answers = [await c.get(AGENTS, headers=h) for h in creds]
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert [r.headers["ratelimit-remaining"] for r in answers] == ["3", "2", "1", "0"]
        for h in (key_header(first), bearer(token)):  # every credential of the user is out, not just one
            resp = await c.get(AGENTS, headers=h)
            assert_problem(resp, 429, "rate_limited")
            assert int(resp.headers["retry-after"]) >= 1 and resp.headers["ratelimit-limit"] == "4"
        # a fresh key minted now shares the spent bucket
        deps = c.app.state.deps
        user = await identity_repo.user_by_email(deps.db, "greedy@example.com")
        assert user is not None
        third = await accounts.bootstrap_key(deps, user.id, name="third", scopes=USER_SCOPES, tier="free")
        assert_problem(await c.get(AGENTS, headers=key_header(third)), 429, "rate_limited")
        other = await add_user(c.app, "bystander@example.com")
        resp = await c.get(AGENTS, headers=key_header(other))
        assert resp.status_code == 200 and resp.headers["ratelimit-remaining"] == "3"


# --- 3. the live-key cap and whose key may be rotated -----------------------------------------------------

async def live_keys(c: Client, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await c.get(KEYS, params={"limit": 100}, headers=headers)
    assert resp.status_code == 200, resp.text
    return [k for k in resp.json()["items"] if k["revoked_at"] is None]


def new_key(c: Client, headers: dict[str, str]) -> Any:
    return c.post(KEYS, json={"name": "k", "scopes": ["tasks:read"]}, headers=headers)


async def test_a_user_holds_at_most_max_api_keys_live_keys(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(max_api_keys_per_user=3)) as c:
        alice = await person(c, "alice")  # holds one key already (add_user's)
        minted = [await mint(c, alice.jwt, ["tasks:read"]) for _ in range(2)]
        resp = await new_key(c, alice.jwt)
        assert "3" in str(assert_problem(resp, 409, "api_key_limit")["detail"])
        assert_problem(await new_key(c, alice.api_key), 409, "api_key_limit")  # any credential
        assert len(await live_keys(c, alice.jwt)) == 3
        # rotating at the cap replaces a key, so it is allowed and the count stays
        resp = await c.post(f"{KEYS}/{minted[0]['id']}/rotate", headers=alice.jwt)
        assert resp.status_code == 201, resp.text
        assert len(await live_keys(c, alice.jwt)) == 3
        assert_problem(await new_key(c, alice.jwt), 409, "api_key_limit")
        # a revoked key frees its place
        assert (await c.delete(f"{KEYS}/{minted[1]['id']}", headers=alice.jwt)).status_code == 204
        assert (await new_key(c, alice.jwt)).status_code == 201
        assert_problem(await new_key(c, alice.jwt), 409, "api_key_limit")
        # the cap is per user: bob is not held back by alice's keys
        bob = await person(c, "bob")
        assert (await new_key(c, bob.jwt)).status_code == 201


@asynccontextmanager
async def starting_line(database_url: str | None, racers: int) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """On PostgreSQL the mints are held at a table lock until all `racers` are blocked (on it, or
    on whatever lock the code takes to serialize them), then let go at once: without that, their
    statements rarely overlap and a race would pass by luck. SQLite serializes writers itself."""
    if database_url is None:
        yield lambda: asyncio.sleep(0)
        return
    gate = await asyncpg.connect(database_url)
    try:
        async def release() -> None:
            async def all_blocked() -> bool:
                await gate.execute("SELECT pg_stat_clear_snapshot()")  # else it is read once per transaction
                waiting = await gate.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                              " AND wait_event_type = 'Lock'")
                return bool(waiting >= racers)
            await wait_for(all_blocked, timeout=10)
            await tx.commit()

        tx = gate.transaction()
        await tx.start()
        await gate.execute("LOCK TABLE api_keys IN SHARE MODE")  # INSERTs wait; reads do not
        yield release
    finally:
        await gate.close()


async def test_concurrent_mints_never_pass_the_cap(make_settings: Callable[..., Settings], database_url: str | None,
                                                   request: pytest.FixtureRequest) -> None:
    # a pool with room for every racer: one waiting for a connection would never reach the line
    async with app_client(make_settings(max_api_keys_per_user=3, db_pool_max=20)) as c:
        for round_ in range(15):  # a lost race shows in ~40% of rounds on PostgreSQL: 15 make it certain
            racer = await person(c, f"racer{round_}")  # one key already: room for 2 more
            async with starting_line(database_url, 10) as release:
                racing = [asyncio.ensure_future(new_key(c, racer.jwt)) for _ in range(10)]
                await release()
                answers = await asyncio.gather(*racing)
            codes = sorted(r.status_code for r in answers)
            assert codes == [201] * 2 + [409] * 8, (round_, codes, [r.text for r in answers if r.status_code >= 500])
            assert len(await live_keys(c, racer.jwt)) == 3


async def test_an_admin_may_revoke_but_never_rotate_another_users_key(client: Client) -> None:
    alice = await person(client, "alice")
    boss = await person(client, "boss", admin=True)
    key = await mint(client, alice.jwt, ["tasks:read", "agents:invoke"])
    for headers in (boss.jwt, boss.api_key):
        resp = await client.post(f"{KEYS}/{key['id']}/rotate", headers=headers)
        body = assert_problem(resp, 403, "cannot_rotate_others_key")
        assert "sk_live_" not in resp.text and "key" not in body
    assert (await me(client, key_header(key["key"])))["api_key_id"] == key["id"]  # not revoked by the attempt
    assert len([k for k in await live_keys(client, alice.jwt) if k["name"] == "k"]) == 1  # and no twin made
    assert (await client.delete(f"{KEYS}/{key['id']}", headers=boss.api_key)).status_code == 204
    assert_problem(await client.get(ME, headers=key_header(key["key"])), 401, "invalid_api_key")
    # an admin still rotates their own keys
    own = await mint(client, boss.jwt, ["tasks:read"])
    assert (await client.post(f"{KEYS}/{own['id']}/rotate", headers=boss.jwt)).status_code == 201


# --- 4. external (OIDC) principals --------------------------------------------------------------------------

async def test_an_external_principal_cannot_mint_keys(oidc_client: Client, idp: JwksServer) -> None:
    token = idp.sign(scope="api_keys:manage tasks:read agents:invoke")
    assert "api_keys:manage" in (await me(oidc_client, bearer(token)))["scopes"]
    resp = await oidc_client.post(KEYS, json={"name": "x", "scopes": ["tasks:read"]}, headers=bearer(token))
    assert_problem(resp, 403, "external_principal")


async def test_logout_of_an_external_token_without_jti_revokes_it(oidc_client: Client, idp: JwksServer) -> None:
    claims = idp.claims()
    del claims["jti"]  # providers need not send one
    token = jwt.encode(claims, idp.private_key, algorithm="RS256", headers={"kid": KID})
    other = jwt.encode({**claims, "iat": claims["iat"] - 1}, idp.private_key, algorithm="RS256", headers={"kid": KID})
    assert (await me(oidc_client, bearer(token)))["auth_method"] == "oidc"
    assert (await oidc_client.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    assert_problem(await oidc_client.get(ME, headers=bearer(token)), 401, "token_revoked")
    assert_problem(await oidc_client.post("/api/v1/auth/logout", headers=bearer(token)), 401, "token_revoked")
    # only that token: another one of the same subject (a different sign-in) still works
    assert (await me(oidc_client, bearer(other)))["user_id"] == "oidc:ext-user-1"


# --- 6. guessing credentials is limited per client IP -----------------------------------------------------

def from_ip(app: Any, ip: str) -> Client:
    c = Client(transport=httpx.ASGITransport(app=app, client=(ip, 4321)), base_url="http://testserver")
    c.app = app
    return c


@pytest.mark.sqlite_only  # the limiter is Redis's
async def test_bad_credentials_from_one_ip_are_cut_off_but_its_valid_key_is_not(
    make_settings: Callable[..., Settings],
) -> None:
    async with app_client(make_settings(rate_limit_unauthenticated_per_ip=10), authenticated=False) as c:
        good = await add_user(c.app, "legit@example.com")
        async with from_ip(c.app, "198.51.100.7") as guesser, from_ip(c.app, "198.51.100.8") as neighbour:
            # every kind of failure counts: a wrong key, a junk token, both headers, none at all
            tries = [{"X-API-Key": f"sk_live_{uuid.uuid4().hex}"}, {"Authorization": "Bearer junk"},
                     {"Authorization": "Bearer x", "X-API-Key": "y"}, {}]
            codes = [(await guesser.get(ME, headers=tries[i % 4])).status_code for i in range(10)]
            assert sorted(codes) == [400] * 2 + [401] * 8, codes
            for headers in tries:
                resp = await guesser.get(ME, headers=headers)
                body = assert_problem(resp, 429, "too_many_auth_failures")
                assert int(resp.headers["retry-after"]) >= 1, body
            # the guesser's valid key is served as always, and another address is not held back
            assert (await guesser.get(ME, headers=key_header(good))).status_code == 200
            assert_problem(await neighbour.get(ME, headers=tries[0]), 401, "invalid_api_key")
            # public routes stay open to the blocked address
            assert (await guesser.get("/health/live")).status_code == 200


# --- 9. a session_id needs the `sessions` scope --------------------------------------------------------------

async def test_a_session_id_needs_the_sessions_scope(client: Client) -> None:
    invoke_only = key_header((await mint(client, {}, ["agents:invoke"]))["key"])
    both = key_header((await mint(client, {}, ["agents:invoke", "sessions"]))["key"])
    with_session = {"message": "remember me", "session_id": "conv-1"}
    for path in (f"{AGENTS}/invoke", f"{AGENTS}/echo/invoke", f"{AGENTS}/stream", f"{AGENTS}/echo/stream"):
        resp = await client.post(path, json=with_session, headers=invoke_only)
        assert "sessions" in str(assert_problem(resp, 403, "insufficient_scope")["detail"]), path
        assert (await client.post(path, json={"message": "hi"}, headers=invoke_only)).status_code == 200, path
        resp = await client.post(path, json=with_session, headers=both)
        assert resp.status_code == 200, (path, resp.text)
    # the refused calls neither read nor wrote the session: it holds only what the scoped key said
    resp = await client.get("/api/v1/sessions/conv-1", headers=both)
    assert resp.status_code == 200, resp.text
    assert [m["content"] for m in resp.json()["messages"] if m["role"] == "user"] == ["remember me"] * 4


async def test_a_queued_invocation_with_a_session_id_needs_the_sessions_scope_too(client: Client) -> None:
    invoke_only = key_header((await mint(client, {}, ["agents:invoke", "tasks:read"]))["key"])
    for path in (f"{AGENTS}/invoke-async", f"{AGENTS}/echo/invoke-async"):
        resp = await client.post(path, json={"message": "hi", "session_id": "conv-2"}, headers=invoke_only)
        assert "sessions" in str(assert_problem(resp, 403, "insufficient_scope")["detail"]), path
