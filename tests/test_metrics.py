"""Prometheus /metrics: job metrics shared through Redis (agent and maintenance jobs, by task kind),
per-process HTTP metrics (by route template, also for requests refused before routing), queue
depth and backlog age, worker heartbeats, rate-limit rejections, no label Prometheus owns, and the
METRICS_TOKEN protection. Real Redis, real app, real worker. tests/test_prometheus.py has a real
Prometheus scrape and query them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from starlette.middleware.authentication import AuthenticationMiddleware

from agent_service.app import create_app
from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from agent_service.kit import serializer
from agent_service.kit.maintenance import MaintenanceJob
from agent_service.kit.metrics import DURATION_BUCKETS, LATENCY_BUCKETS, JobMetrics
from agent_service.kit.middleware import UNMATCHED, route_template
from agent_service.ops.metrics import CONTENT_TYPE, HttpMetrics
from agent_service.tasks import maintenance
from agent_service.tasks import queue as names
from tests.support.apps import Client, add_user, app_client
from tests.support.waiting import wait_for
from tests.support.workers import quiescent

Start = Callable[[Settings], Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
INVOKE, STREAM = names.INVOKE_AGENT, names.INVOKE_AGENT_STREAMING
RESERVED = {"job", "instance"}  # Prometheus' scrape labels: a series of ours with one would be renamed


def parse(text: str) -> Samples:
    """Every sample of a text exposition, keyed by (sample name, labels); fails if it does not parse."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def buckets(samples: Samples, name: str, **labels: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts for one label set, by upper bound."""
    out: dict[float, float] = {}
    for (sample, lbls), v in samples.items():
        d = dict(lbls)
        le = d.pop("le", None)
        if sample == f"{name}_bucket" and d == labels and le is not None:
            out[float(le)] = v
    return out


def expected_buckets(bounds: tuple[float, ...], observed: list[float]) -> dict[float, float]:
    return {**{b: float(sum(o <= b for o in observed)) for b in bounds}, float("inf"): float(len(observed))}


async def scrape(client: Client, **headers: str) -> Samples:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == CONTENT_TYPE
    return parse(resp.text)


def job_counts(samples: Samples, task_kind: str) -> dict[str, float]:
    return {what: value(samples, f"agent_jobs_{what}_total", task_kind=task_kind)
            for what in ("started", "succeeded", "failed", "retried", "cancelled", "deferred")}


# --- job metrics (Redis) ---------------------------------------------------------------------

async def test_job_counters_and_histograms_move_by_exactly_the_events(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as c:
        m: JobMetrics = c.app.state.deps.metrics
        durations_ok, durations_failed = [0.02, 3.0], [0.5]
        for _ in range(3):
            await m.event("started", INVOKE)
        for d in durations_ok:
            await m.event("succeeded", INVOKE, duration=d)
        for d in durations_failed:
            await m.event("failed", INVOKE, duration=d)
        await m.event("retried", INVOKE)
        await m.event("cancelled", INVOKE, duration=700.0)  # beyond the last bound: +Inf only
        await m.event("deferred", INVOKE)
        await m.event("deferred", INVOKE)
        await m.event("started", STREAM)
        for s in (0.003, 0.2):
            await m.enqueue_latency(INVOKE, s)
        await m.rate_limited("api:free")
        await m.rate_limited("api:free")
        await m.rate_limited(f"job:{INVOKE}")

        samples = await scrape(c)

    assert job_counts(samples, INVOKE) == {"started": 3, "succeeded": 2, "failed": 1, "retried": 1,
                                           "cancelled": 1, "deferred": 2}
    assert job_counts(samples, STREAM) == {"started": 1, "succeeded": 0, "failed": 0, "retried": 0,
                                           "cancelled": 0, "deferred": 0}
    observed = durations_ok + durations_failed + [700.0]
    assert buckets(samples, "agent_job_duration_seconds", task_kind=INVOKE) == expected_buckets(DURATION_BUCKETS,
                                                                                           observed)
    assert value(samples, "agent_job_duration_seconds_count", task_kind=INVOKE) == 4
    assert value(samples, "agent_job_duration_seconds_sum", task_kind=INVOKE) == pytest.approx(sum(observed))
    assert buckets(samples, "agent_job_enqueue_latency_seconds", task_kind=INVOKE) == expected_buckets(
        LATENCY_BUCKETS, [0.003, 0.2])
    assert value(samples, "agent_job_enqueue_latency_seconds_count", task_kind=INVOKE) == 2
    assert value(samples, "agent_job_enqueue_latency_seconds_sum", task_kind=INVOKE) == pytest.approx(0.203)
    assert value(samples, "agent_rate_limit_rejections_total", kind="api:free") == 2
    assert value(samples, "agent_rate_limit_rejections_total", kind=f"job:{INVOKE}") == 1


async def test_counts_add_up_across_processes(settings: Settings, redis_url: str) -> None:
    """Two workers' JobMetrics on their own connections add into the same numbers."""
    workers = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    try:
        metrics = [JobMetrics(r, prefix=settings.redis_key_prefix) for r in workers]
        await asyncio.gather(*(m.event("started", INVOKE) for m in metrics for _ in range(5)))
        async with app_client(settings, authenticated=False) as c:
            assert value(await scrape(c), "agent_jobs_started_total", task_kind=INVOKE) == 10
    finally:
        for r in workers:
            await r.aclose()


async def test_redis_down_never_breaks_a_job_and_metrics_still_render(settings: Settings) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2)
    m = JobMetrics(dead, prefix=settings.redis_key_prefix)
    try:
        await m.event("started", INVOKE)
        await m.event("succeeded", INVOKE, duration=1.0)
        await m.event("failed", INVOKE, duration=1.0)
        await m.enqueue_latency(INVOKE, 0.1)
        await m.rate_limited("api:free")
        async with app_client(settings, authenticated=False) as c:
            c.app.state.deps.metrics = m
            await c.get("/health/live")
            samples = await scrape(c)  # this process's HTTP metrics, without the Redis part
        assert value(samples, "http_requests_total", method="GET", route="/health/live", status="200") == 1
        assert not any(name.startswith("agent_jobs_") for name, _ in samples)
        # what Redis would tell is absent, not a false zero (an alert on "no worker" sees no data)
        assert not any(name.startswith(("agent_worker", "agent_queue_backlog")) for name, _ in samples)
    finally:
        await dead.aclose()


async def test_queue_depth_by_state(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as c:
        redis: Redis = c.app.state.deps.redis
        now_ms = int(time.time() * 1000)
        await redis.zadd(settings.queue_name, {"due-1": now_ms - 5000, "due-2": now_ms - 1000,
                                               "running-1": now_ms - 9000, "later-1": now_ms + 600_000})
        await redis.set(in_progress_key_prefix + "running-1", b"1", px=60_000)  # arq's mark of a running job
        samples = await scrape(c)
    depth = {state: value(samples, "agent_queue_depth", state=state) for state in ("queued", "deferred", "running")}
    assert depth == {"queued": 2, "deferred": 1, "running": 1}


async def test_backlog_age_is_how_long_the_oldest_due_job_has_waited(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as c:
        redis: Redis = c.app.state.deps.redis
        assert value(await scrape(c), "agent_queue_backlog_age_seconds") == 0  # nothing waits
        now = int(time.time() * 1000)

        async def put(job_id: str, *, enqueued: int, score: int) -> None:
            job = serialize_job(INVOKE, ({},), {}, None, enqueued, serializer=serializer.serialize)
            await redis.set(job_key_prefix + job_id, job, px=600_000)
            await redis.zadd(settings.queue_name, {job_id: score})

        # queued 300 s ago to run now: its score is before that (priority head start, fairness window)
        await put("waiting", enqueued=now - 300_000, score=now - 300_000 - 90_000)
        await put("scheduled", enqueued=now - 3_600_000, score=now - 20_000)  # due 20 s ago: waits since then
        await put("running", enqueued=now - 900_000, score=now - 900_000)  # started: not waiting
        await redis.set(in_progress_key_prefix + "running", b"1", px=60_000)
        await put("later", enqueued=now - 3_600_000, score=now + 600_000)  # not due yet
        age = value(await scrape(c), "agent_queue_backlog_age_seconds")
    assert 300 <= age < 330


async def test_maintenance_runs_are_counted_under_their_own_task_kind(settings: Settings) -> None:
    async def boom(deps: Any) -> Any:
        raise RuntimeError("disk on fire")

    failing = MaintenanceJob(name="always_fails", schedule_setting="cron_cleanup_temp_files", run=boom)
    async with app_client(settings, authenticated=False) as c:
        with pytest.raises(RuntimeError):
            await maintenance.run(c.app.state.deps, failing, task_id=None, slot="1")
        samples = await scrape(c)
    assert job_counts(samples, "always_fails") == {"started": 1, "succeeded": 0, "failed": 1, "retried": 0,
                                                   "cancelled": 0, "deferred": 0}
    assert value(samples, "agent_job_duration_seconds_count", task_kind="always_fails") == 1


# --- the real worker -------------------------------------------------------------------------

async def submit(client: Client, body: dict[str, Any]) -> str:
    resp = await client.post("/api/v1/agents/echo/invoke-async", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


async def test_counters_move_by_exactly_the_jobs_a_real_worker_ran(
    client: Client, settings: Settings, start_worker: Start
) -> None:
    for i in range(3):
        await submit(client, {"message": f"ok {i}"})
    await submit(client, {"message": "no", "metadata": {"fail": "permanent"}})
    await submit(client, {"message": "flaky", "metadata": {"fail": "transient", "fail_times": 1}})
    await submit(client, {"message": "a b c", "stream": True})
    worker = await start_worker(settings)

    async def all_ended() -> Samples | None:
        s = await scrape(client)
        ended = sum(value(s, f"agent_jobs_{w}_total", task_kind=j)
                    for w in ("succeeded", "failed") for j in (INVOKE, STREAM))
        return s if ended >= 6 else None

    await wait_for(all_ended, timeout=20)
    await wait_for(lambda: quiescent(worker), timeout=5)  # the queue is drained: nothing more can be counted
    samples = await scrape(client)
    # every run is a start: the transient one ran twice (retried once, then succeeded)
    assert job_counts(samples, INVOKE) == {"started": 6, "succeeded": 4, "failed": 1, "retried": 1,
                                           "cancelled": 0, "deferred": 0}
    assert job_counts(samples, STREAM) == {"started": 1, "succeeded": 1, "failed": 0, "retried": 0,
                                           "cancelled": 0, "deferred": 0}
    # a duration per run that ended the job; the enqueue-to-start latency once per job (first run)
    assert value(samples, "agent_job_duration_seconds_count", task_kind=INVOKE) == 5
    assert value(samples, "agent_job_duration_seconds_count", task_kind=STREAM) == 1
    assert value(samples, "agent_job_enqueue_latency_seconds_count", task_kind=INVOKE) == 5
    assert value(samples, "agent_job_enqueue_latency_seconds_count", task_kind=STREAM) == 1
    assert value(samples, "agent_job_duration_seconds_sum", task_kind=INVOKE) > 0


async def test_a_maintenance_job_a_real_worker_ran_is_counted(
    client: Client, settings: Settings, start_worker: Start
) -> None:
    admin = {"X-API-Key": await add_user(client.app, "ops@example.com", admin=True)}
    resp = await client.post("/api/v1/jobs/maintenance/cleanup_temp_files", headers=admin)
    assert resp.status_code == 202, resp.text
    worker = await start_worker(settings)

    async def ended() -> Samples | None:
        s = await scrape(client)
        return s if value(s, "agent_jobs_succeeded_total", task_kind="cleanup_temp_files") else None

    await wait_for(ended, timeout=20)
    await wait_for(lambda: quiescent(worker), timeout=5)
    samples = await scrape(client)
    assert job_counts(samples, "cleanup_temp_files") == {"started": 1, "succeeded": 1, "failed": 0,
                                                         "retried": 0, "cancelled": 0, "deferred": 0}
    assert value(samples, "agent_job_duration_seconds_count", task_kind="cleanup_temp_files") == 1


async def test_worker_heartbeats_are_exported(client: Client, settings: Settings, start_worker: Start) -> None:
    assert value(await scrape(client), "agent_workers_alive") == 0
    await start_worker(settings)

    async def beating() -> Samples | None:
        s = await scrape(client)
        return s if value(s, "agent_workers_alive") == 1 else None

    samples = await wait_for(beating, timeout=10)
    ages = {dict(lbls)["worker_id"]: v for (name, lbls), v in samples.items()
            if name == "agent_worker_heartbeat_age_seconds"}
    assert len(ages) == 1
    worker_id, age = ages.popitem()
    assert 0 <= age < 3 * settings.worker_health_interval  # beats every interval, expires after three
    assert value(samples, "agent_worker_running_jobs", worker_id=worker_id) == 0


async def test_job_rate_limit_deferral_is_counted_once(make_settings: Callable[..., Settings],
                                                       start_worker: Start) -> None:
    settings = make_settings(job_rate_limit_invoke=1)  # one a minute: the second job waits ~60 s
    async with app_client(settings) as c:
        await submit(c, {"message": "first"})
        await submit(c, {"message": "second"})
        worker = await start_worker(settings)

        async def settled() -> Samples | None:
            s = await scrape(c)
            counts = job_counts(s, INVOKE)
            return s if counts["succeeded"] == 1 and counts["deferred"] == 1 else None

        await wait_for(settled, timeout=15)
        # the worker idle and the deferred job not due for a while: a second count could only come now
        await wait_for(lambda: quiescent(worker, due_within=10), timeout=5)
        samples = await scrape(c)
    assert job_counts(samples, INVOKE) == {"started": 1, "succeeded": 1, "failed": 0, "retried": 0,
                                           "cancelled": 0, "deferred": 1}
    assert value(samples, "agent_rate_limit_rejections_total", kind=f"job:{INVOKE}") == 1


async def test_api_rate_limit_rejections_are_counted(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(rate_limit_free=2)) as c:
        statuses = [(await c.get("/api/v1/agents/tasks")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        samples = await scrape(c)
    assert value(samples, "agent_rate_limit_rejections_total", kind="api:free") == 1


# --- HTTP metrics ----------------------------------------------------------------------------

async def test_requests_refused_before_routing_are_counted_under_their_route(settings: Settings) -> None:
    """A bad credential is answered 401 by the credential middleware before the router runs: the
    route is looked up for it (as the router would pick it)."""
    async with app_client(settings, authenticated=False) as c:
        c.headers["X-API-Key"] = "not-a-key"
        assert (await c.get("/api/v1/agents/tasks/abc")).status_code == 401
        assert (await c.get("/api/v1/agents/tasks/def")).status_code == 401
        assert (await c.post("/api/v1/agents/echo/invoke-async", json={})).status_code == 401
        assert (await c.post("/api/v1/agents/invoke-async", json={})).status_code == 401  # the fixed one first
        assert (await c.get("/api/v1/users")).status_code == 401  # GET and POST are two routes
        assert (await c.delete("/api/v1/agents/tasks/abc")).status_code == 401  # no DELETE: still its path
        assert (await c.get("/api/v1/no-such-thing/1")).status_code == 401
        del c.headers["X-API-Key"]
        samples = await scrape(c)
    for method, route, n in (("GET", "/api/v1/agents/tasks/{task_id}", 2),
                             ("POST", "/api/v1/agents/{agent_id}/invoke-async", 1),
                             ("POST", "/api/v1/agents/invoke-async", 1), ("GET", "/api/v1/users", 1),
                             ("DELETE", "/api/v1/agents/tasks/{task_id}", 1), ("GET", UNMATCHED, 1)):
        assert value(samples, "http_requests_total", method=method, route=route, status="401") == n, route
        assert value(samples, "http_request_duration_seconds_count", method=method, route=route) == n
    routes = {dict(lbls).get("route") for name, lbls in samples if name == "http_requests_total"}
    assert not any(raw in (r or "") for r in routes for raw in ("abc", "def", "echo", "no-such-thing"))


async def test_no_series_carries_a_label_prometheus_owns(
    client: Client, settings: Settings, start_worker: Start
) -> None:
    """Every family there is, each with a sample: none may name a label `job` or `instance`."""
    m: JobMetrics = client.app.state.deps.metrics
    for what in ("started", "succeeded", "failed", "retried", "cancelled", "deferred", "orphaned"):
        await m.event(what, INVOKE, duration=0.1)
    await m.enqueue_latency(INVOKE, 0.1)
    await m.rate_limited("api:free")
    await client.get("/health/live")
    await start_worker(settings)
    samples = await wait_for(lambda: _with_worker(client), timeout=10)
    families = {name.removesuffix("_total").removesuffix("_count") for name, _ in samples}
    assert {"agent_jobs_started", "agent_job_duration_seconds", "agent_queue_depth", "agent_workers_alive",
            "agent_worker_heartbeat_age_seconds", "agent_queue_backlog_age_seconds", "http_requests",
            "agent_rate_limit_rejections"} <= families
    labelled = {(name, key) for name, lbls in samples for key, _ in lbls}
    assert not {(name, key) for name, key in labelled if key in RESERVED or key.startswith("exported_")}
    assert ("agent_jobs_started_total", "task_kind") in labelled


async def _with_worker(client: Client) -> Samples | None:
    s = await scrape(client)
    return s if value(s, "agent_workers_alive") >= 1 else None


async def test_http_requests_are_labelled_by_route_template_never_the_raw_path(client: Client) -> None:
    for task_id in ("abc", "def"):
        assert (await client.get(f"/api/v1/agents/tasks/{task_id}")).status_code == 404
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/api/v1/no-such-thing/123")).status_code == 404  # inside the Mount
    assert (await client.get("/nowhere/456")).status_code == 404
    assert (await client.delete("/health/live")).status_code == 405

    samples = await scrape(client)
    task = "/api/v1/agents/tasks/{task_id}"
    assert value(samples, "http_requests_total", method="GET", route=task, status="404") == 2
    assert value(samples, "http_requests_total", method="GET", route="/health/live", status="200") == 1
    assert value(samples, "http_requests_total", method="DELETE", route="/health/live", status="405") == 1
    assert value(samples, "http_requests_total", method="GET", route=UNMATCHED, status="404") == 2
    assert value(samples, "http_request_duration_seconds_count", method="GET", route=task) == 2
    assert value(samples, "http_request_duration_seconds_bucket", method="GET", route=task, le="+Inf") == 2
    assert value(samples, "http_request_duration_seconds_sum", method="GET", route=task) > 0
    routes = {dict(lbls).get("route") for name, lbls in samples if name.startswith("http_")}
    assert routes == {task, "/health/live", UNMATCHED}  # the scrape itself is counted when it ends
    for raw in ("abc", "def", "123", "456", "no-such-thing", "nowhere"):
        assert not any(raw in (r or "") for r in routes)


def test_observe_and_route_template_directly() -> None:
    a, b = HttpMetrics(), HttpMetrics()  # a registry each: many apps in one process, no clashes
    a.observe("GET", "/api/v1/agents/{agent_id}/invoke", 200, 0.03)
    a.observe("GET", "/api/v1/agents/{agent_id}/invoke", 200, 2.0)
    a.observe("POST", UNMATCHED, 404, 0.001)
    sa, sb = parse(generate_latest(a.registry).decode()), parse(generate_latest(b.registry).decode())
    inv = {"method": "GET", "route": "/api/v1/agents/{agent_id}/invoke"}
    assert value(sa, "http_requests_total", **inv, status="200") == 2
    assert value(sa, "http_requests_total", method="POST", route=UNMATCHED, status="404") == 1
    assert value(sa, "http_request_duration_seconds_count", **inv) == 2
    assert value(sa, "http_request_duration_seconds_sum", **inv) == pytest.approx(2.03)
    assert value(sa, "http_request_duration_seconds_bucket", **inv, le="0.05") == 1
    assert not any(name.startswith("http_requests_total") for name, _ in sb)
    assert route_template({"type": "http", "path": "/x/1"}) == UNMATCHED


async def test_two_apps_in_one_process_keep_their_own_http_metrics(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as one, app_client(settings, authenticated=False) as two:
        await one.get("/health/live")
        await one.get("/health/live")
        await two.get("/health/live")
        live = {"method": "GET", "route": "/health/live", "status": "200"}
        assert value(await scrape(one), "http_requests_total", **live) == 2
        assert value(await scrape(two), "http_requests_total", **live) == 1


# --- METRICS_TOKEN ---------------------------------------------------------------------------

@pytest.mark.sqlite_only  # METRICS_TOKEN on /metrics: no SQL in it
async def test_without_a_token_metrics_are_open(settings: Settings) -> None:
    async with app_client(settings, authenticated=False) as c:
        resp = await c.get("/metrics")
        assert resp.status_code == 200 and "# TYPE http_requests_total counter" in resp.text


@pytest.mark.sqlite_only  # METRICS_TOKEN on /metrics: no SQL in it
async def test_token_is_required_when_set(make_settings: Callable[..., Settings]) -> None:
    async with app_client(make_settings(metrics_token="s3cret-token"), authenticated=False) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            resp = await c.get("/metrics", headers=headers)
            assert resp.status_code == 401, headers
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert "agent_jobs" not in resp.text and "http_requests_total" not in resp.text


@pytest.mark.sqlite_only  # METRICS_TOKEN on /metrics: no SQL in it
async def test_endpoint_checks_the_token_itself(make_settings: Callable[..., Settings]) -> None:
    """The endpoint's own check, with the API's credential middleware taken out of the way."""
    app = create_app(make_settings(metrics_token="s3cret-token"))
    app.user_middleware = [m for m in app.user_middleware if getattr(m, "cls", None) is not AuthenticationMiddleware]
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/metrics", headers={"Authorization": "Bearer s3cret-tokenX"})).status_code == 401
            ok = await c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200 and ok.headers["content-type"] == CONTENT_TYPE
            assert parse(ok.text)


@pytest.mark.sqlite_only  # METRICS_TOKEN on /metrics: no SQL in it
async def test_scraper_with_the_right_token_gets_metrics(make_settings: Callable[..., Settings]) -> None:
    """`Authorization: Bearer <METRICS_TOKEN>` reaches /metrics: the API's credential check (which
    would read it as a malformed JWT) leaves this path alone."""
    async with app_client(make_settings(metrics_token="s3cret-token"), authenticated=False) as c:
        await c.get("/health/live")
        samples = await scrape(c, Authorization="Bearer s3cret-token")
        assert value(samples, "http_requests_total", method="GET", route="/health/live", status="200") == 1
