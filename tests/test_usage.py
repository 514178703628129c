"""Usage and budgets end to end: the app in process, real arq workers, echo (words as tokens) and
the LLM agent against the local fake OpenAI server (which reports usage). Both SQL backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from agent_service.errors import ServiceUnavailable
from agent_service.identity.cache import AuthCache
from agent_service.kit.deps import Deps
from agent_service.usage import service as usage
from tests.support.apps import Client, add_user, app_client
from tests.support.clock import FakeClock
from tests.support.fake_openai import FakeOpenAI, iter_fake_openai
from tests.support.tasks import finished, submit
from tests.support.waiting import wait_for

Start = Callable[..., Any]
RESERVE = 100


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield from iter_fake_openai()


async def report(api: Client, query: str = "", **headers: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/usage{query}", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def my_id(api: Client) -> str:
    return str((await api.get("/api/v1/auth/me")).json()["user_id"])


async def test_each_run_records_what_it_used(settings: Settings, start_worker: Start) -> None:
    async with app_client(settings) as api:
        key_id = (await api.get("/api/v1/auth/me")).json()
        await start_worker(settings)
        ids = [await submit(api, {"message": "one two three"}),
               await submit(api, {"message": "four five", "stream": True})]
        done = [await finished(api, t) for t in ids]
        assert done[0]["result"]["metadata"]["usage"] == {"input_tokens": 3, "output_tokens": 3}
        assert (await api.post("/api/v1/agents/echo/invoke", json={"message": "six"})).status_code == 200
        streamed = await api.post("/api/v1/agents/echo/stream", json={"message": "seven eight"})
        assert streamed.status_code == 200 and '"type":"done"' in streamed.text.replace(" ", "")
        by_agent = await report(api, "?group_by=agent")
        [echo] = by_agent["items"]
        assert (echo["key"], echo["runs"], echo["input_tokens"], echo["output_tokens"]) == ("echo", 4, 8, 8)
        assert echo["cost"] is None and by_agent["total"]["total_tokens"] == 16  # no MODEL_PRICES: no cost
        [today] = (await report(api, "?group_by=day"))["items"]
        assert today["key"] == datetime.now(UTC).strftime("%Y-%m-%d") and today["runs"] == 4
        keys = {g["key"]: g["runs"] for g in (await report(api, "?group_by=key"))["items"]}
        assert sum(keys.values()) == 4 and len([k for k in keys if k]) == 1  # both tasks under the submitting key
        assert keys[next(k for k in keys if k)] == 2
        assert (await report(api, "?since=2999-01-01T00:00:00Z"))["items"] == []
        assert key_id["auth_method"] == "api_key"
        assert by_agent["budget"]["limit"] is None and by_agent["budget"]["used"] == 16


async def test_the_llm_agents_usage_is_priced_and_counted(
        make_settings: Callable[..., Settings], fake: FakeOpenAI, start_worker: Start) -> None:
    settings = make_settings(llm_base_url=fake.base_url, llm_model="gpt-test",
                             model_prices=json.dumps({"gpt-test": {"input": 2.0, "output": 4.0}}))
    async with app_client(settings) as api:
        await start_worker(settings)
        sync = await api.post("/api/v1/agents/simple_llm_agent/invoke", json={"message": "price me"})
        assert sync.status_code == 200, sync.text
        tasks = [await submit(api, {"message": "and me too"}, agent="simple_llm_agent"),
                 await submit(api, {"message": "streamed please", "stream": True}, agent="simple_llm_agent")]
        results = [(await finished(api, t))["result"]["metadata"]["usage"] for t in tasks]
        used = [sync.json()["metadata"]["usage"], *results]
        stream_req = [r for r in fake.requests if r.body.get("stream")]
        assert stream_req and stream_req[0].body["stream_options"] == {"include_usage": True}
        tokens_in, tokens_out = sum(u["input_tokens"] for u in used), sum(u["output_tokens"] for u in used)
        assert tokens_in > 0 and tokens_out > 0
        [model] = (await report(api, "?group_by=model"))["items"]
        assert (model["key"], model["runs"], model["input_tokens"], model["output_tokens"]) == (
            "gpt-test", 3, tokens_in, tokens_out)
        assert model["cost"] == pytest.approx((tokens_in * 2.0 + tokens_out * 4.0) / 1_000_000)

        async def scraped() -> dict[tuple[str, str], float] | None:
            text = (await api.get("/metrics")).text
            got = {(s.name, s.labels.get("direction", "")): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name.startswith("agent_usage_") and s.labels.get("model") == "gpt-test"}
            return got if got.get(("agent_usage_tokens_total", "output")) == tokens_out else None

        samples = await wait_for(scraped, timeout=15)
        assert samples[("agent_usage_tokens_total", "input")] == tokens_in
        assert samples[("agent_usage_cost_usd_total", "")] == pytest.approx(model["cost"])


async def test_only_admins_read_other_users_usage(client: Client) -> None:
    me = await my_id(client)
    other = await add_user(client.app, "someone-else@example.com")
    resp = await client.get(f"/api/v1/usage?owner={me}", headers={"X-API-Key": other})
    assert resp.status_code == 403
    admin = await add_user(client.app, "usage-admin@example.com", admin=True)
    assert (await report(client, f"?owner={me}", **{"X-API-Key": admin}))["owner_id"] == me
    assert (await report(client, "", **{"X-API-Key": admin}))["owner_id"] is None  # everyone's
    bad = await client.get("/api/v1/usage?group_by=week")
    assert bad.status_code == 422


@pytest.fixture
def budget_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(budget_tokens_free=7 * RESERVE, budget_reserve_tokens=RESERVE)


async def test_concurrent_submissions_never_overrun_the_budget(budget_settings: Settings, start_worker: Start) -> None:
    async with app_client(budget_settings) as api:
        rows_before = await api.app.state.deps.db.fetchone("SELECT COUNT(*) FROM tasks")
        answers = await asyncio.gather(*(api.post("/api/v1/agents/echo/invoke-async", json={"message": f"w{i} x"})
                                         for i in range(20)))
        accepted = [a.json()["task_id"] for a in answers if a.status_code == 202]
        refused = [a for a in answers if a.status_code != 202]
        assert len(accepted) == 7 and all(a.status_code == 429 for a in refused)  # only 7 holds of 100 fit in 700
        problem = refused[0].json()
        assert problem["code"] == "budget_exceeded" and int(refused[0].headers["retry-after"]) > 0
        rows = await api.app.state.deps.db.fetchone("SELECT COUNT(*) FROM tasks")
        assert rows[0] == rows_before[0] + 7  # the refused ones were never written
        budget = (await report(api))["budget"]
        assert (budget["limit"], budget["used"], budget["reserved"], budget["remaining"]) == (700, 0, 700, 0)
        batch = await api.post("/api/v1/agents/echo/invoke-batch", json={"items": [{"message": "more"}]})
        assert batch.status_code == 429 and batch.json()["code"] == "budget_exceeded"
        sync = await api.post("/api/v1/agents/echo/invoke", json={"message": "now"})
        assert sync.status_code == 429 and sync.json()["code"] == "budget_exceeded"
        await start_worker(budget_settings)
        for task_id in accepted:
            await finished(api, task_id)

        async def settled() -> dict[str, Any] | None:
            b = (await report(api))["budget"]
            return b if b["reserved"] == 0 else None

        after = await wait_for(settled, timeout=15)
        assert after["used"] == 7 * 4 <= after["limit"]  # each run: 2 words in, 2 out
        # what the runs did not use is free again: 6 more holds fit in 700 - 28, a batch of 7 does not
        assert (await api.post("/api/v1/agents/echo/invoke-batch",
                               json={"items": [{"message": "b"}] * 7})).status_code == 429
        fits = await api.post("/api/v1/agents/echo/invoke-batch",
                              json={"items": [{"message": "b", "delay_seconds": 600}] * 6})
        assert fits.status_code == 202, fits.text
        cancel = await api.post(f"/api/v1/batches/{fits.json()['batch_id']}/cancel")
        assert cancel.json()["state"] == "cancelled"
        assert (await report(api))["budget"]["reserved"] == 0  # cancelled while queued: holds given back


async def test_the_refusal_names_the_reset_and_a_new_month_starts_afresh(budget_settings: Settings) -> None:
    async with app_client(budget_settings) as api:
        clock = FakeClock(datetime(2031, 1, 31, 23, 59, 0, tzinfo=UTC))
        api.app.state.deps.clock = clock
        for _ in range(7):
            assert (await api.post("/api/v1/agents/echo/invoke-async", json={"message": "m"})).status_code == 202
        refused = await api.post("/api/v1/agents/echo/invoke-async", json={"message": "m"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        assert "2031-02-01T00:00:00Z" in refused.json()["detail"]
        assert (await report(api))["budget"]["resets_at"].startswith("2031-02-01T00:00:00")
        clock.advance(minutes=1)
        assert (await api.post("/api/v1/agents/echo/invoke-async", json={"message": "m"})).status_code == 202


async def test_an_admin_sets_a_users_own_budget(client: Client) -> None:
    admin = {"X-API-Key": await add_user(client.app, "budget-admin@example.com", admin=True)}
    me = await my_id(client)
    resp = await client.patch(f"/api/v1/users/{me}", json={"monthly_token_budget": 2000}, headers=admin)
    assert resp.status_code == 200 and resp.json()["monthly_token_budget"] == 2000
    first = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "a"})
    second = await client.post("/api/v1/agents/echo/invoke-async", json={"message": "b"})
    assert first.status_code == 202 and second.status_code == 429  # the default hold is 2000 tokens
    assert (await report(client))["budget"]["limit"] == 2000
    resp = await client.patch(f"/api/v1/users/{me}", json={"monthly_token_budget": -1}, headers=admin)
    assert resp.json()["monthly_token_budget"] is None  # back to the tier's: none
    assert (await client.post("/api/v1/agents/echo/invoke-async", json={"message": "c"})).status_code == 202
    assert (await client.patch(f"/api/v1/users/{me}", json={"monthly_token_budget": 5})).status_code == 403


async def test_a_budgeted_user_is_refused_while_redis_is_down(budget_settings: Settings) -> None:
    async with app_client(budget_settings) as api:
        deps = api.app.state.deps
        dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
        down = Deps(settings=deps.settings, db=deps.db, redis=dead, http=deps.http)  # type: ignore[arg-type]
        down.provide(AuthCache.of, deps.part(AuthCache.of))  # the user rows, as this process caches them
        with pytest.raises(ServiceUnavailable) as refused:
            await usage.reserve(down, await my_id(api), ["t1"])
        assert refused.value.code == "budget_unavailable" and refused.value.headers["Retry-After"]
        await dead.aclose()


async def test_runs_settled_together_share_a_statement_and_a_repeat_counts_once(client: Client) -> None:
    deps: Deps = client.app.state.deps
    me = await my_id(client)
    meta = {"usage": {"input_tokens": 2, "output_tokens": 3}}
    # ten runs ending at once, one of them twice (a re-delivered job): eleven settles, ten rows
    ends = [usage.settle(deps, owner_id=me, agent_id="echo", metadata=meta, task_id=f"together-{i}")
            for i in (*range(10), 3)]
    await asyncio.gather(*ends)
    await usage.settle(deps, owner_id=me, agent_id="echo", metadata=meta, task_id="together-3")  # and later again
    rows = await deps.db.fetchall("SELECT task_id, input_tokens + output_tokens FROM usage WHERE owner_id = ?"
                                  " AND task_id LIKE 'together-%'", (me,))
    assert sorted((r[0], r[1]) for r in rows) == sorted((f"together-{i}", 5) for i in range(10))
    [echo] = (await report(client, "?group_by=agent"))["items"]
    assert (echo["runs"], echo["input_tokens"], echo["output_tokens"]) == (10, 20, 30)
