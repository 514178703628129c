"""identity/cache.py: web processes keep the rows behind credentials in memory, and a change made
through any one of them (a revoked key, a deactivated or downgraded user, a sign-out) stops the
old credential on every other one within a second. Two real uvicorn processes share Redis and the
database; AUTH_CACHE_TTL is a minute, so only the invalidation message can make B see in time
what A changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from agent_service.cli import bootstrap
from agent_service.cli.embedded import EmbeddedRedis, free_port
from agent_service.clock import iso, utcnow
from agent_service.config import load_settings
from agent_service.identity.cache import AuthCache
from agent_service.identity.repository import ApiKeyRecord
from agent_service.kit.deps import open_database
from agent_service.kit.redis import connect
from tests.support.identity import ME, USERS
from tests.support.processes import E2E_PASSWORD, Process, bootstrap_user
from tests.support.waiting import wait_for, wait_http_ok, wait_until

WITHIN = 1.0  # s: how soon every web process must refuse what one of them revoked
USER_EMAIL = "cached@example.com"


class Webs:
    def __init__(self, env: dict[str, str], a: str, b: str, procs: list[Process]) -> None:
        self.env, self.a, self.b, self.procs = env, a, b, procs

    def get(self, base: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.get(f"{base}{ME}", headers=headers, timeout=10)


@pytest.fixture
def webs(env: dict[str, str], spawn: Callable[..., Process]) -> Iterator[Webs]:
    env = {**env, "AUTH_CACHE_TTL": "60"}
    bases, procs = [], []
    for port in (free_port(), free_port()):
        procs.append(spawn("web", env, PORT=str(port)))
        bases.append(f"http://127.0.0.1:{port}")
    for base, proc in zip(bases, procs, strict=True):
        wait_http_ok(f"{base}/health/live", on_fail=lambda p=proc: p.output()[-3000:])  # type: ignore[misc]
        # subscribed to the invalidations: from now on B keeps what it reads
        wait_until(lambda p=proc: '"auth_cache.live"' in p.output(), timeout=10,  # type: ignore[misc]
                   message=lambda p=proc: p.output()[-3000:])  # type: ignore[misc]
    yield Webs(env, bases[0], bases[1], procs)


def refused_within(check: Callable[[], httpx.Response], seconds: float = WITHIN) -> httpx.Response:
    """Poll `check` until it answers 401, at most `seconds` after now; that answer."""
    return wait_until(lambda: (r := check()).status_code == 401 and r, timeout=seconds, interval=0.01)


def revoke_behind_the_back(env: dict[str, str], key_id: str) -> None:
    """Revoke a key straight in SQL: no service is told (what only AUTH_CACHE_TTL bounds)."""
    async def go() -> None:
        db = await open_database(load_settings(env, env_file=None))
        try:
            await db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (iso(utcnow()), key_id))
        finally:
            await db.close()

    asyncio.run(go())


@pytest.mark.e2e
def test_a_key_revoked_on_one_web_process_fails_on_the_other_within_a_second(webs: Webs) -> None:
    admin = {"X-API-Key": bootstrap_user(webs.env, "root@example.com", admin=True)}
    user = {"X-API-Key": bootstrap_user(webs.env, USER_EMAIL)}
    spare = {"X-API-Key": asyncio.run(bootstrap.create_api_key(load_settings(webs.env, env_file=None),
                                                                email=USER_EMAIL, name="spare"))}
    for headers in (admin, user, spare):
        assert webs.get(webs.b, headers).status_code == 200  # now in B's cache

    # B answers from its cache: a change nobody announced is not seen there before the TTL
    spare_id = webs.get(webs.a, spare).json()["api_key_id"]
    revoke_behind_the_back(webs.env, spare_id)
    assert webs.get(webs.b, spare).status_code == 200

    # revoked through A: B refuses it within a second (the owner revokes, then an admin's key)
    key_id = webs.get(webs.b, user).json()["api_key_id"]
    gone = httpx.delete(f"{webs.a}/api/v1/api-keys/{key_id}", headers=user, timeout=10)
    assert gone.status_code in (200, 204), gone.text
    refused = refused_within(lambda: webs.get(webs.b, user))
    assert refused.json()["code"] == "invalid_api_key"
    assert webs.get(webs.a, user).status_code == 401
    gone = httpx.delete(f"{webs.a}/api/v1/api-keys/{spare_id}", headers=admin, timeout=10)
    assert gone.status_code in (200, 204), gone.text
    refused_within(lambda: webs.get(webs.b, spare))


@pytest.mark.e2e
def test_deactivation_downgrade_and_logout_on_one_process_hold_on_the_other_within_a_second(webs: Webs) -> None:
    settings = load_settings(webs.env, env_file=None)
    admin = {"X-API-Key": bootstrap_user(webs.env, "root@example.com", admin=True)}
    user_id = asyncio.run(bootstrap.create_user(settings, email=USER_EMAIL, password=E2E_PASSWORD, admin=False,
                                                tier="pro"))
    key = {"X-API-Key": asyncio.run(bootstrap.create_api_key(settings, email=USER_EMAIL, name="k", tier="pro"))}

    def sign_in() -> dict[str, str]:
        r = httpx.post(f"{webs.a}/api/v1/auth/token", json={"email": USER_EMAIL, "password": E2E_PASSWORD},
                       timeout=10)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    # signed out on A: the token fails on B within a second
    token = sign_in()
    assert webs.get(webs.b, token).status_code == 200
    out = httpx.post(f"{webs.a}/api/v1/auth/logout", headers=token, json={}, timeout=10)
    assert out.status_code == 204, out.text
    assert refused_within(lambda: webs.get(webs.b, token)).json()["code"] == "token_revoked"

    # downgraded on A: B's answers use the new tier within a second (for the key and a token)
    token = sign_in()
    for headers in (key, token):
        assert webs.get(webs.b, headers).json()["tier"] == "pro"
    patched = httpx.patch(f"{webs.a}{USERS}/{user_id}", json={"tier": "free"}, headers=admin, timeout=10)
    assert patched.status_code == 200, patched.text
    for headers in (key, token):
        wait_until(lambda h=headers: webs.get(webs.b, h).json()["tier"] == "free",  # type: ignore[misc]
                   timeout=WITHIN, interval=0.01)

    # deactivated on A: the key and the token fail on B within a second
    patched = httpx.patch(f"{webs.a}{USERS}/{user_id}", json={"is_active": False}, headers=admin, timeout=10)
    assert patched.status_code == 200, patched.text
    started = time.monotonic()
    assert refused_within(lambda: webs.get(webs.b, key)).json()["code"] == "invalid_api_key"
    assert refused_within(lambda: webs.get(webs.b, token), WITHIN - (time.monotonic() - started))
    for p in webs.procs:
        assert "Traceback" not in p.output(), p.output()[-3000:]


def _row(key_id: str) -> ApiKeyRecord:
    now = utcnow()
    return ApiKeyRecord(id=key_id, user_id="u", name="n", prefix="sk_live_x", scopes=("tasks:read",), tier="free",
                        created_at=now, expires_at=None, last_used_at=None, revoked_at=None)


async def test_a_read_that_raced_an_invalidation_is_not_kept_and_a_lost_subscription_empties_the_cache(
        tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    settings = load_settings({"APP_ENV": "test", "REDIS_URL": server.url}, env_file=None)
    redis = connect(settings)
    cache = AuthCache(redis, prefix="t:", ttl=60)
    try:
        cache.start()
        await wait_for(lambda: cache.live)
        # a lookup that began before an invalidation does not store the row it read (maybe the old one)
        before = cache.generation
        cache.drop("k:key-1")
        cache.put_key("h1", _row("key-1"), before)
        assert cache.key("h1") is None
        cache.put_key("h1", _row("key-1"), cache.generation)
        assert cache.key("h1") is not None
        # a message from another process takes it out
        await redis.publish(cache.channel, "k:key-1")
        await wait_for(lambda: cache.key("h1") is None, timeout=WITHIN)
        # the subscription is lost (Redis away): nothing is kept or served until it is back
        cache.put_key("h2", _row("key-2"), cache.generation)
        assert cache.key("h2") is not None
        server.stop()
        await wait_for(lambda: not cache.live, timeout=10)
        assert cache.key("h2") is None
        cache.put_key("h2", _row("key-2"), cache.generation)
        assert cache.key("h2") is None
        server = EmbeddedRedis(tmp_path / "redis", port=server.port, appendonly=False).start()
        await wait_for(lambda: cache.live, timeout=15)
        assert cache.key("h2") is None
    finally:
        await cache.aclose()
        await redis.aclose()
        server.stop()
