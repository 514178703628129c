"""The SSRF guard of webhooks: only http(s), and no address inside the network — checked when a URL
is registered (a 422 naming the field) and again at every delivery, where the connection goes to
the address that was checked and no redirect is followed. Names are answered by a resolver the
test controls (the guard's seam), so a DNS answer can change between registration and delivery."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from agent_service.config import Settings
from agent_service.kit import ssrf
from agent_service.kit.deps import Deps
from tests.support.apps import Client, app_client
from tests.support.tasks import submit
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import Receiver, StaticResolver, running_receiver

Start = Callable[..., Any]
PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(("address", "allow_private"), [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("192.0.2.1", False), ("::1", False), ("fe80::1", False), ("fc00::1", False),
    ("ff02::1", False), ("::", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("2002:7f00:1::", False), ("64:ff9b::a9fe:a9fe", False), ("169.254.169.254", False),
    # metadata addresses, in any form, even where private networks are allowed
    ("169.254.169.254", True), ("::ffff:169.254.169.254", True), ("fd00:ec2::254", True), ("100.100.100.200", True),
    ("64:ff9b::a9fe:a9fe", True), ("169.254.170.2", True),
])
def test_refused_addresses(address: str, allow_private: bool) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address), allow_private=allow_private)


@pytest.mark.parametrize(("address", "allow_private"), [
    ("8.8.8.8", False), (PUBLIC, False), ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False),
    ("127.0.0.1", True), ("10.1.2.3", True), ("::1", True), ("192.168.1.1", True),
])
def test_allowed_addresses(address: str, allow_private: bool) -> None:
    assert ssrf.refusal(ipaddress.ip_address(address), allow_private=allow_private) is None


@pytest.fixture
def resolver() -> StaticResolver:
    return StaticResolver({"private.test": ["10.9.8.7"], "mixed.test": [PUBLIC, "192.168.0.10"],
                           "public.test": [PUBLIC], "nowhere.test": []})


@pytest.fixture
async def guarded(settings: Settings, resolver: StaticResolver) -> AsyncIterator[Client]:
    """The app as deployed: WEBHOOK_ALLOW_PRIVATE_NETWORKS off (its default)."""
    assert settings.webhook_allow_private_networks is False
    async with app_client(settings) as c:
        c.app.state.deps.provide(ssrf.resolver, resolver)
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


REFUSED = [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://localhost:9000/hook", "loopback"),  # the system's resolver: 127.0.0.1 / ::1
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://10.0.0.5/hook", "private"),
    ("http://0.0.0.0/hook", "not a unicast"),
    ("http://private.test/hook", "private"),
    ("http://mixed.test/hook", "private"),  # one private answer among public ones is enough
    ("http://nowhere.test/hook", "does not resolve"),
    ("ftp://public.test/hook", "Only http and https"),
    ("file:///etc/passwd", "Only http and https"),
    ("http://user:secret@public.test/hook", "user name or password"),
    ("http://public.test:99999/hook", "not valid"),
    ("javascript:alert(1)", "Only http and https"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
async def test_registration_refuses_what_reaches_inside(guarded: Client, url: str, why: str) -> None:
    resp = await guarded.post("/api/v1/webhooks", json={"url": url})
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert resp.headers["content-type"] == "application/problem+json" and problem["code"] == "webhook_url_refused"
    assert problem["errors"][0]["path"] == "$.url" and why in problem["errors"][0]["message"]
    assert (await guarded.get("/api/v1/webhooks")).json()["items"] == []


async def test_a_task_webhook_and_a_url_change_are_checked_too(guarded: Client) -> None:
    resp = await guarded.post("/api/v1/agents/echo/invoke-async",
                              json={"message": "x", "webhook": {"url": "http://169.254.169.254/"}})
    assert resp.status_code == 422 and resp.json()["errors"][0]["path"] == "$.webhook.url"
    assert (await guarded.get("/api/v1/agents/tasks")).json()["items"] == []  # nothing was queued
    created = await guarded.post("/api/v1/webhooks", json={"url": "https://public.test/hook"})
    assert created.status_code == 201, created.text
    moved = await guarded.patch(f"/api/v1/webhooks/{created.json()['id']}", json={"url": "http://localhost/"})
    assert moved.status_code == 422 and moved.json()["errors"][0]["path"] == "$.url"
    assert (await guarded.get(f"/api/v1/webhooks/{created.json()['id']}")).json()["url"] == "https://public.test/hook"


async def test_metadata_stays_refused_where_private_networks_are_allowed(
        make_settings: Callable[..., Settings], receiver: Receiver) -> None:
    async with app_client(make_settings(webhook_allow_private_networks=True)) as c:
        assert (await c.post("/api/v1/webhooks", json={"url": receiver.url})).status_code == 201
        for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                    "http://[::ffff:169.254.169.254]/"):
            resp = await c.post("/api/v1/webhooks", json={"url": url})
            assert resp.status_code == 422 and "metadata" in resp.json()["errors"][0]["message"], url


async def _worker(start_worker: Start, settings: Settings, resolver: StaticResolver) -> Deps:
    worker = await start_worker(settings)
    deps: Deps = await wait_for(lambda: worker.ctx.get("deps"))
    deps.provide(ssrf.resolver, resolver)
    return deps


async def _deliveries(c: Client, sub_id: str, count: int = 1) -> list[dict[str, Any]]:
    async def found() -> list[dict[str, Any]] | None:
        items = (await c.get(f"/api/v1/webhooks/{sub_id}/deliveries")).json()["items"]
        return items if items and sum(len(d["history"]) for d in items) >= count else None

    return await wait_for(found, timeout=15)  # type: ignore[no-any-return]


async def test_a_dns_answer_that_changes_to_a_private_address_is_refused_at_delivery(
        guarded: Client, settings: Settings, start_worker: Start, resolver: StaticResolver,
        receiver: Receiver) -> None:
    resolver.answers["rebind.test"] = [PUBLIC]
    created = await guarded.post("/api/v1/webhooks", json={"url": f"http://rebind.test:{receiver.port}/hook"})
    assert created.status_code == 201, created.text
    resolver.answers["rebind.test"] = ["127.0.0.1"]  # the name now points inside (DNS rebinding)
    await _worker(start_worker, settings, resolver)
    await submit(guarded, {"message": "to a rebound name"})
    [d] = await _deliveries(guarded, created.json()["id"])
    attempt = d["history"][0]
    assert attempt["status_code"] is None and attempt["error"].startswith("Refused:")
    assert "127.0.0.1 is a loopback address" in attempt["error"] and d["state"] == "pending"
    assert receiver.received == []  # nothing reached the address behind the name


async def test_the_connection_goes_to_the_checked_address_under_the_url_host(
        make_settings: Callable[..., Settings], start_worker: Start, resolver: StaticResolver,
        receiver: Receiver) -> None:
    settings = make_settings(webhook_allow_private_networks=True, webhook_poll_seconds=1)
    resolver.answers["pinned.test"] = ["127.0.0.1"]  # the system's resolver has never heard of it
    async with app_client(settings) as c:
        c.app.state.deps.provide(ssrf.resolver, resolver)
        created = await c.post("/api/v1/webhooks", json={"url": f"http://pinned.test:{receiver.port}/hook?x=1"})
        receiver.secrets.append(created.json()["secret"])
        await _worker(start_worker, settings, resolver)
        await submit(c, {"message": "pinned"})
        await wait_for(lambda: receiver.received, timeout=15)
        r = receiver.received[0]
        assert (r.host, r.path, bool(r.verified_by)) == (f"pinned.test:{receiver.port}", "/hook?x=1", True)


async def test_a_redirect_is_never_followed(
        make_settings: Callable[..., Settings], start_worker: Start, resolver: StaticResolver,
        receiver: Receiver) -> None:
    settings = make_settings(webhook_allow_private_networks=True, webhook_poll_seconds=1)
    with running_receiver() as target:
        receiver.plan.append(f"redirect:{target.url}")
        async with app_client(settings) as c:
            created = await c.post("/api/v1/webhooks", json={"url": receiver.url})
            await _worker(start_worker, settings, resolver)
            await submit(c, {"message": "redirected"})
            [d] = await _deliveries(c, created.json()["id"])
            assert d["history"][0]["status_code"] == 302 and "not followed" in d["history"][0]["error"]
            assert d["state"] == "pending" and target.received == []
