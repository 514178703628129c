"""The per-account sign-in throttle (identity/login_throttle.py) attacked as a password guesser with
many addresses would: in process with a controlled clock (the delays grow 1, 2, 4 … s up to
LOGIN_FAILURE_DELAY_MAX), and against real uvicorn with a 1 s cap, waiting on the Retry-After."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from agent_service.config import Settings
from tests.support.apps import Client, add_user, app_client
from tests.support.clock import FakeClock
from tests.support.identity import PASSWORD, TOKEN
from tests.support.problems import assert_problem
from tests.support.processes import E2E_PASSWORD, Live, bootstrap_user
from tests.support.waiting import wait_until

pytestmark = pytest.mark.sqlite_only  # the throttle is Redis's: no SQL in what it decides

# every request claims another address; the proxy in front (127.0.0.0/8) is trusted, so the app
# believes them and the per-IP login limit never sees one address twice
_addresses = (f"203.0.113.{n % 250}, 198.51.{n // 250}.{n % 250}" for n in itertools.count(1))


def forged() -> dict[str, str]:
    return {"X-Forwarded-For": next(_addresses)}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "LOGIN_FAILURES_BEFORE_DELAY": "3", "LOGIN_FAILURE_DELAY_MAX": "1",
            "TRUSTED_PROXIES": "127.0.0.0/8", "RATE_LIMIT_LOGIN_PER_IP": "2"}


@pytest.fixture
async def throttled(make_settings: Callable[..., Settings]) -> Any:
    async with app_client(make_settings(login_failure_delay_max=4), authenticated=False) as c:
        clock = FakeClock(datetime.now(UTC))
        c.app.state.deps.clock = clock
        await add_user(c.app, "victim@example.com", password=PASSWORD)
        await add_user(c.app, "bystander@example.com", password=PASSWORD)
        yield c, clock


async def attempt(c: Client, email: str, password: str) -> httpx.Response:
    return await c.post(TOKEN, json={"email": email, "password": password}, headers=forged())


def held_back(resp: httpx.Response, seconds: int) -> dict[str, object]:
    body = assert_problem(resp, 429, "login_throttled")
    assert resp.headers["retry-after"] == str(seconds), (resp.headers, body)
    return body


async def test_after_the_free_failures_even_the_right_password_waits_and_the_wait_doubles_to_the_cap(
    throttled: tuple[Client, FakeClock],
) -> None:
    c, clock = throttled
    for _ in range(3):
        assert_problem(await attempt(c, "victim@example.com", "guess"), 401, "invalid_credentials")
    held_back(await attempt(c, "victim@example.com", PASSWORD), 1)
    clock.advance(seconds=0.5)
    held_back(await attempt(c, "victim@example.com", PASSWORD), 1)  # rounded up: never "retry in 0 s"
    clock.advance(seconds=0.501)  # (a millisecond over: the stored time is a float)
    # each further failure doubles the wait, up to LOGIN_FAILURE_DELAY_MAX (4 here)
    for wait in (2, 4, 4):
        assert_problem(await attempt(c, "victim@example.com", "guess"), 401, "invalid_credentials")
        held_back(await attempt(c, "victim@example.com", PASSWORD), wait)
        clock.advance(seconds=wait - 0.01)
        held_back(await attempt(c, "victim@example.com", PASSWORD), 1)
        clock.advance(seconds=0.011)
    # waited out: the right password gets in, and the count starts again from zero
    assert (await attempt(c, "victim@example.com", PASSWORD)).status_code == 200
    for _ in range(3):
        assert_problem(await attempt(c, "victim@example.com", "guess"), 401, "invalid_credentials")
    held_back(await attempt(c, "victim@example.com", PASSWORD), 1)


async def test_other_spellings_and_the_form_grant_share_the_accounts_throttle(
    throttled: tuple[Client, FakeClock],
) -> None:
    c, _ = throttled
    for spelling in ("victim@example.com", "VICTIM@example.com", "Victim@Example.COM"):
        assert_problem(await attempt(c, spelling, "guess"), 401, "invalid_credentials")
    held_back(await attempt(c, "victim@EXAMPLE.com", PASSWORD), 1)
    form = await c.post(TOKEN, data={"grant_type": "password", "username": "victim@example.com",
                                     "password": PASSWORD}, headers=forged())
    held_back(form, 1)


async def test_another_account_is_not_held_back_and_an_unknown_email_looks_the_same(
    throttled: tuple[Client, FakeClock],
) -> None:
    c, _ = throttled
    for email in ("victim@example.com", "nobody-here@example.com"):
        for _ in range(3):
            assert_problem(await attempt(c, email, "guess"), 401, "invalid_credentials")
    known = held_back(await attempt(c, "victim@example.com", PASSWORD), 1)
    unknown = held_back(await attempt(c, "nobody-here@example.com", PASSWORD), 1)
    assert (known["title"], known["detail"]) == (unknown["title"], unknown["detail"])
    # the victim's neighbour signs in as usual meanwhile
    assert (await attempt(c, "bystander@example.com", PASSWORD)).status_code == 200


@pytest.mark.e2e  # uvicorn and a worker as child processes
def test_against_the_running_service_the_throttle_holds_across_forged_addresses_and_lifts(
    live_service: Live, env: dict[str, str],
) -> None:
    bootstrap_user(env, "target@example.com")
    bootstrap_user(env, "neighbour@example.com")

    def post(client: httpx.Client, email: str, password: str) -> httpx.Response:
        return client.post(f"{live_service.base}{TOKEN}", json={"email": email, "password": password},
                           headers=forged())

    with httpx.Client(timeout=10) as client:
        for email in ("target@example.com", "ghost@example.com"):
            for _ in range(3):
                assert_problem(post(client, email, "guess"), 401, "invalid_credentials")
            held_back(post(client, email, E2E_PASSWORD), 1)
        assert post(client, "neighbour@example.com", E2E_PASSWORD).status_code == 200

        # Retry-After says 1 s: the right password is let in once that has passed (bounded wait)
        def signed_in() -> httpx.Response | None:
            resp = post(client, "target@example.com", E2E_PASSWORD)
            assert resp.status_code in (200, 429), resp.text
            return resp if resp.status_code == 200 else None

        assert wait_until(signed_in, timeout=5, interval=0.1).json()["access_token"]
        # and the count was reset: a single wrong password is an ordinary 401, not a hold
        assert_problem(post(client, "target@example.com", "guess"), 401, "invalid_credentials")
        assert post(client, "target@example.com", E2E_PASSWORD).status_code == 200

