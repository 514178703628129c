"""Bounds of the hardening, in process: the audit aggregation of failed sign-ins (explicit times), the
overall time limit of a stream, echo's caps outside development, and which answers may be cached."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest

from agent_service.agents.echo import EchoAgent
from agent_service.agents.schemas import AgentInput, InvalidAgentInput
from agent_service.audit import failures
from agent_service.audit.failures import FailureAggregator
from agent_service.audit.schemas import AuditEntry
from agent_service.config import Settings
from tests.support.apps import Client, app_client
from tests.support.identity import ME, USERS, key_header
from tests.support.problems import assert_problem

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def failure(ip: str, n: int) -> AuditEntry:
    return AuditEntry(action="FAILED_AUTH", resource_type="auth", client_ip=ip, path=f"/try/{n}", status=401,
                      user_agent=f"guesser/{n}")


# --- 7. FailureAggregator ------------------------------------------------------------------------------

def test_failures_fold_into_one_summary_per_address_and_window() -> None:
    agg = FailureAggregator(window=timedelta(seconds=60))
    a = [failure("198.51.100.1", n) for n in range(6)]
    b = [failure("198.51.100.2", n) for n in range(2)]
    assert agg.admit(a[0], at(0)) == [a[0]]  # the first of a window is written as it is
    assert agg.admit(a[1], at(10)) == [] and agg.admit(a[2], at(20)) == []
    assert agg.admit(b[0], at(30)) == [b[0]]  # another address opens its own window
    assert agg.admit(b[1], at(40)) == []
    assert agg.due(at(59.9)) == []
    [summary] = agg.due(at(60))  # a's window is over, b's is not
    assert (summary.client_ip, summary.path, summary.user_agent) == ("198.51.100.1", "/try/2", "guesser/2")
    assert summary.metadata == {"repeated": 2, "window_start": at(0).isoformat(), "window_end": at(60).isoformat()}
    assert a[2].metadata == {}  # the entry it was made from is not changed
    # a new failure opens a new window; a later one rolls it over without waiting for due()
    assert agg.admit(a[3], at(61)) == [a[3]]
    assert agg.admit(a[4], at(62)) == []
    rolled, opened = agg.admit(a[5], at(500))
    assert opened is a[5] and rolled.path == "/try/4"
    assert rolled.metadata == {"repeated": 1, "window_start": at(61).isoformat(), "window_end": at(121).isoformat()}
    # closing: every open window's summary, over or not; a window with nothing folded into it has none
    [closing] = agg.due(at(500), everything=True)
    assert closing.client_ip == "198.51.100.2" and closing.metadata["repeated"] == 1
    assert closing.metadata["window_end"] == at(90).isoformat()  # the window's end, not the close's
    assert agg.due(at(10_000), everything=True) == []


def test_a_spray_of_addresses_does_not_grow_the_aggregator_without_bound() -> None:
    agg = FailureAggregator()
    for i in range(failures.MAX_ADDRESSES):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        agg.admit(failure(ip, 0), at(0))
        agg.admit(failure(ip, 1), at(1))
    out = agg.admit(failure("192.0.2.1", 0), at(2))
    # the windows are flushed early rather than dropped: each one's count is written
    assert len(out) == failures.MAX_ADDRESSES + 1 and out[-1].client_ip == "192.0.2.1"
    assert all(e.metadata["repeated"] == 1 for e in out[:-1])
    assert agg.due(at(3), everything=True) == []


# --- 11. the stream time limit and echo's caps ----------------------------------------------------------

def sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        data = [line[len("data: "):] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


async def test_a_slow_stream_is_cut_at_stream_time_limit(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(stream_time_limit=0.5)) as c:
        body = {"message": " ".join(f"w{i}" for i in range(50)), "metadata": {"delay": 0.2}}  # 10 s of answer
        started = time.monotonic()
        resp = await c.post("/api/v1/agents/echo/stream", json=body)
        elapsed = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        events = sse(resp.text)
        assert events[-1] == {"type": "error", "code": "stream_time_limit", "status": 504,
                              "detail": events[-1]["detail"]}, events
        assert 1 <= sum(e["type"] == "chunk" for e in events) <= 3 and "done" not in {e["type"] for e in events}
        assert elapsed < 3, elapsed


def test_outside_development_echo_caps_its_delay_and_message() -> None:
    agent = EchoAgent.for_settings(Settings(app_env="production", echo_max_delay=60, echo_max_chars=100_000))
    assert agent.validate(AgentInput(message="x" * 20_000, metadata={"delay": 5}))[0] == 5
    for data, path in ((AgentInput(message="x", metadata={"delay": 5.01}), "$.metadata"),
                       (AgentInput(message="x", metadata={"delay": 60}), "$.metadata"),
                       (AgentInput(message="x" * 20_001), "$.message")):
        with pytest.raises(InvalidAgentInput) as refused:
            agent.validate(data)
        assert refused.value.path == path, data
    # settings below the production caps still apply
    lower = EchoAgent.for_settings(Settings(app_env="production", echo_max_delay=1, echo_max_chars=10))
    with pytest.raises(InvalidAgentInput):
        lower.validate(AgentInput(message="x", metadata={"delay": 2}))
    with pytest.raises(InvalidAgentInput):
        lower.validate(AgentInput(message="x" * 11))


@pytest.mark.parametrize("env_name", ["test", "development"])
def test_in_test_and_development_echo_takes_the_configured_bounds(env_name: Literal["test", "development"]) -> None:
    agent = EchoAgent.for_settings(Settings(app_env=env_name, echo_max_delay=120, echo_max_chars=200_000))
    assert agent.validate(AgentInput(message="x" * 200_000, metadata={"delay": 120}))[0] == 120
    with pytest.raises(InvalidAgentInput):
        agent.validate(AgentInput(message="x" * 200_001))


async def test_an_over_long_message_is_a_422_naming_the_message(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(echo_max_chars=10, echo_max_delay=1)) as c:
        for body, path in (({"message": "x" * 11}, "$.message"), ({"message": "x", "metadata": {"delay": 2}},
                                                                 "$.metadata")):
            for url in ("/api/v1/agents/echo/invoke", "/api/v1/agents/echo/stream",
                        "/api/v1/agents/echo/invoke-async"):
                problem: dict[str, Any] = assert_problem(await c.post(url, json=body), 422, "validation_error")
                assert [e["path"] for e in problem["errors"]] == [path], (url, problem)


# --- 8. answers given before the endpoint runs ----------------------------------------------------------------

def bare(c: Client) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=c.app), base_url="http://testserver")


@pytest.mark.parametrize("case", ["missing credentials", "bad key", "both credentials", "scope", "rate limited"])
@pytest.mark.sqlite_only  # headers, no SQL
async def test_refusals_of_an_authenticated_route_are_no_store_too(make_settings: Callable[..., Settings],
                                                                   case: str) -> None:
    async with app_client(make_settings(rate_limit_free=1)) as c, bare(c) as anon:
        if case == "rate limited":
            assert (await c.get(ME)).status_code == 200  # the one request a minute
        requests: dict[str, tuple[httpx.AsyncClient, str, dict[str, str]]] = {
            "missing credentials": (anon, ME, {}),
            "bad key": (anon, ME, key_header("sk_live_" + "x" * 43)),
            "both credentials": (anon, ME, {"Authorization": "Bearer x", "X-API-Key": "y"}),
            "scope": (c, USERS, {}),  # an ordinary user's key on an admin route
            "rate limited": (c, ME, {}),
        }
        sender, path, headers = requests[case]
        answer = await sender.get(path, headers=headers)
        assert answer.status_code in (400, 401, 403, 429), answer.text
        assert answer.headers.get("cache-control") == "no-store", (answer.status_code, answer.headers)


@pytest.mark.sqlite_only  # headers, no SQL
async def test_a_streamed_answer_is_no_store(client: Client) -> None:
    async with client.stream("POST", "/api/v1/agents/echo/stream", json={"message": "private words"}) as resp:
        assert resp.status_code == 200
        await resp.aread()
    assert resp.headers.get("cache-control") == "no-store", resp.headers
