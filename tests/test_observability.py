"""Errors to Sentry and traces to OpenTelemetry, against local stand-ins with the real SDKs: a Sentry
ingest endpoint and an OTLP/HTTP collector on 127.0.0.1 (tests/support/telemetry_receivers.py),
real uvicorn and worker processes. And with the settings unset: neither SDK is even imported."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from arq import create_pool
from arq.connections import RedisSettings

from agent_service.kit import error_reporting, serializer
from agent_service.tasks.queue import INVOKE_AGENT
from agent_service.tasks.schemas import AgentJob
from tests.support.crashing_agent import LOCAL_MARKER
from tests.support.environment import ROOT, TEST_ENV
from tests.support.fake_openai import FakeOpenAI, start_fake_openai
from tests.support.processes import E2E_EMAIL, E2E_PASSWORD, Live, bootstrap_user
from tests.support.telemetry_receivers import OtlpReceiver, SentryReceiver
from tests.support.waiting import wait_until

pytestmark = pytest.mark.sqlite_only  # nothing here depends on the SQL backend

LLM_KEY = "llm-key-must-never-leave-0123456789"
BODY_MARKER = "body-marker-of-the-user-5f1e"
QUERY_SECRET = "query-token-marker-9c2d"
COOKIE_SECRET = "cookie-marker-41aa"


@pytest.fixture
def sentry() -> Iterator[SentryReceiver]:
    with SentryReceiver() as receiver:
        yield receiver


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def fake_llm() -> Iterator[FakeOpenAI]:
    with start_fake_openai() as fake:
        yield fake


@pytest.fixture
def env(env: dict[str, str], sentry: SentryReceiver, otlp: OtlpReceiver, fake_llm: FakeOpenAI) -> dict[str, str]:
    """The service reporting to the stand-ins (the batch span processor exporting every 50 ms)."""
    return {**env, "SENTRY_DSN": sentry.dsn, "SENTRY_ENVIRONMENT": "ci", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_SERVICE_NAME": "agent-service-test", "OTEL_BSP_SCHEDULE_DELAY": "50",
            "AGENTS": "tests.support.crashing_agent:CrashingAgent", "LLM_BASE_URL": fake_llm.base_url,
            "LLM_API_KEY": LLM_KEY}


def _submit(live: Live, agent: str, message: str) -> tuple[str, str]:
    resp = httpx.post(f"{live.base}/api/v1/agents/{agent}/invoke-async", json={"message": message},
                      headers=live.headers, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"], resp.headers["x-request-id"]


def _finished(live: Live, task_id: str) -> dict[str, Any]:
    def state() -> dict[str, Any] | None:
        body = httpx.get(f"{live.base}/api/v1/agents/tasks/{task_id}", headers=live.headers, timeout=5).json()
        return body if body["state"] in ("SUCCESS", "FAILURE", "REVOKED") else None

    found: dict[str, Any] = wait_until(state, timeout=20, message=lambda: live.worker.output()[-3000:])
    return found


def _event(sentry: SentryReceiver, live: Live, **tags: str) -> dict[str, Any]:
    def match() -> dict[str, Any] | None:
        return next((e for e in sentry.events() if tags.items() <= e.get("tags", {}).items()), None)

    found: dict[str, Any] = wait_until(match, timeout=15, message=lambda: f"events: {sentry.events()}\n"
                                       f"{live.web.output()[-2000:]}{live.worker.output()[-2000:]}")
    return found


def _exception_types(event: dict[str, Any]) -> list[str]:
    return [v["type"] for v in event.get("exception", {}).get("values", [])]


@pytest.mark.e2e
def test_a_web_500_reaches_sentry_tagged_and_scrubbed(live_service: Live, sentry: SentryReceiver) -> None:
    live = live_service
    token = httpx.post(f"{live.base}/api/v1/auth/token", json={"email": E2E_EMAIL, "password": E2E_PASSWORD},
                       timeout=10).json()["access_token"]
    bearer = httpx.post(f"{live.base}/api/v1/agents/crashing/invoke?token={QUERY_SECRET}&lang=en",
                        json={"message": BODY_MARKER}, timeout=10,
                        headers={"Authorization": f"Bearer {token}", "Cookie": f"session={COOKIE_SECRET}"})
    keyed = httpx.post(f"{live.base}/api/v1/agents/crashing/invoke", json={"message": BODY_MARKER},
                       headers=live.headers, timeout=10)
    assert (bearer.status_code, keyed.status_code) == (500, 500), (bearer.text, keyed.text)
    assert bearer.json()["code"] == "internal_error" and "agent bug" not in bearer.text

    for resp in (bearer, keyed):
        event = _event(sentry, live, request_id=resp.headers["x-request-id"])
        assert _exception_types(event) == ["RuntimeError"]
        assert event["tags"]["process"] == "web" and event["environment"] == "ci"
        assert event["logentry"]["message"] == "http.unhandled_error"
        request = event["request"]
        assert request["method"] == "POST" and request["url"].endswith("/api/v1/agents/crashing/invoke")
        assert {"authorization", "x-api-key", "cookie"}.isdisjoint(h.lower() for h in request.get("headers", {}))
        assert "data" not in request and "cookies" not in request
    bearer_event = _event(sentry, live, request_id=bearer.headers["x-request-id"])
    assert bearer_event["request"]["query_string"] == "token=%5BFiltered%5D&lang=en"
    frames = [f for v in bearer_event["exception"]["values"] for f in v["stacktrace"]["frames"]]
    assert frames and not any("vars" in f for f in frames)

    raw = sentry.raw().decode()
    for secret in (token, live.headers["X-API-Key"], COOKIE_SECRET, QUERY_SECRET, BODY_MARKER, LOCAL_MARKER, LLM_KEY,
                   TEST_ENV["JWT_SECRET"]):
        assert secret not in raw, secret
    assert "[Filtered]" in json.dumps(bearer_event["exception"])  # the key in the message: filtered, not dropped


@pytest.mark.e2e
def test_a_crashing_job_reaches_sentry_with_task_id_and_agent(live_service: Live, sentry: SentryReceiver) -> None:
    live = live_service
    task_id, request_id = _submit(live, "crashing", BODY_MARKER)
    assert _finished(live, task_id)["state"] == "FAILURE"
    event = _event(sentry, live, task_id=task_id)
    assert event["tags"]["agent"] == "crashing" and event["tags"]["request_id"] == request_id
    assert event["tags"]["process"] == "worker" and event["tags"].get("job_id")
    assert event["logentry"]["message"] == "job.crashed" and _exception_types(event) == ["RuntimeError"]
    assert "trace_id" in event["tags"]  # tracing is on too: the report points at the job's trace

    # a second crash is a barrier: the worker sends in order, so a report of the first job's
    # JobFailed (an outcome, not a bug) would have arrived before the second job's crash
    second, _ = _submit(live, "crashing", "again")
    _event(sentry, live, task_id=second)
    failures = [e for e in sentry.events() if "JobFailed" in _exception_types(e)]
    assert failures == []
    crashed_first = [e for e in sentry.events() if e.get("tags", {}).get("task_id") == task_id]
    assert len(crashed_first) == 1
    assert BODY_MARKER not in sentry.raw().decode()  # arq logs the payload at INFO: no breadcrumbs


@pytest.mark.e2e
def test_an_error_arq_reports_carries_the_jobs_tags(live_service: Live, sentry: SentryReceiver,
                                                    env: dict[str, str]) -> None:
    """A job whose payload does not decode fails outside the runner: arq logs it, after the job's
    own context is gone, and the report still names the task and the agent."""
    live = live_service

    async def enqueue() -> None:
        pool = await create_pool(RedisSettings.from_dsn(env["REDIS_URL"]), job_serializer=serializer.serialize,
                                 default_queue_name=env["QUEUE_NAME"])
        await pool.enqueue_job(INVOKE_AGENT, {"task_id": "malformed-1", "agent_id": "echo"}, _job_id="malformed-1")
        await pool.aclose()

    asyncio.run(enqueue())
    event = _event(sentry, live, task_id="malformed-1")
    assert event["logger"] == "arq.worker" and _exception_types(event) == ["ValidationError"]
    assert event["tags"]["agent"] == "echo" and event["tags"]["job_id"] == "malformed-1"
    assert event["tags"]["process"] == "worker"


@pytest.mark.e2e
def test_one_trace_from_the_request_through_the_job_to_the_llm_call(live_service: Live, otlp: OtlpReceiver,
                                                                     fake_llm: FakeOpenAI) -> None:
    live = live_service
    task_id, request_id = _submit(live, "simple_llm_agent", BODY_MARKER)
    assert _finished(live, task_id)["state"] == "SUCCESS"
    assert fake_llm.requests and "traceparent" not in fake_llm.requests[0].headers  # no context to the provider

    def spans() -> dict[str, dict[str, Any]] | None:
        found = otlp.spans()
        request = next((s for s in found if s["name"] == "POST /api/v1/agents/{agent_id}/invoke-async"), None)
        if request is None:
            return None
        same = {s["name"]: s for s in found if s["trace_id"] == request["trace_id"]}
        wanted = ("enqueue agent job", "run invoke_agent_async", "chat gpt-4o-mini")
        return same if all(name in same for name in wanted) else None

    trace = wait_until(spans, timeout=15, message=lambda: f"spans: {[s['name'] for s in otlp.spans()]}")
    server = trace["POST /api/v1/agents/{agent_id}/invoke-async"]
    enqueue, run, llm = trace["enqueue agent job"], trace["run invoke_agent_async"], trace["chat gpt-4o-mini"]
    assert [s["kind"] for s in (server, enqueue, run, llm)] == ["server", "producer", "consumer", "client"]
    assert enqueue["parent_span_id"] == server["span_id"]
    assert run["parent_span_id"] == enqueue["span_id"]
    assert llm["parent_span_id"] == run["span_id"]
    assert [s["resource"]["agent_service.process"] for s in (server, enqueue, run, llm)] == [
        "web", "web", "worker", "worker"]
    assert {s["resource"]["service.name"] for s in trace.values()} == {"agent-service-test"}
    assert server["attributes"]["http.route"] == "/api/v1/agents/{agent_id}/invoke-async"
    assert server["attributes"]["http.response.status_code"] == 202
    assert server["attributes"]["agent_service.request_id"] == request_id
    assert run["attributes"]["agent_service.task_id"] == enqueue["attributes"]["agent_service.task_id"] == task_id
    assert llm["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm["attributes"]["http.response.status_code"] == 200

    raw = otlp.raw()
    for secret in (BODY_MARKER, LLM_KEY, live.headers["X-API-Key"]):
        assert secret.encode() not in raw, secret


def test_a_job_queued_before_tracing_still_decodes() -> None:
    old = {"task_id": "t1", "agent_id": "echo", "message": "hi", "tier": "free"}
    assert msgspec.convert(old, AgentJob).traceparent is None


def test_the_scrubber_filters_credentials_bodies_and_secret_values() -> None:
    secret = "settings-secret-value-123"
    event: dict[str, Any] = {
        "request": {"url": "http://h/api/v1/x?token=abc", "query_string": "token=abc&api_key=k&page=2",
                    "headers": {"Authorization": "Bearer xyz", "X-API-Key": "sk_live_" + "a" * 43, "Cookie": "s=1",
                                "Content-Type": "application/json"}, "data": {"message": "user text"},
                    "cookies": {"s": "1"}},
        "extra": {"payload": "user text"}, "breadcrumbs": {"values": [{"message": "user text"}]},
        "exception": {"values": [{"type": "RuntimeError", "value": f"failed with {secret} and Bearer abc.def"}]},
        "contexts": {"x": {"password": "hunter22", "note": "sk_live_" + "b" * 43}},
    }
    out = error_reporting.scrub(event, {}, secrets=[secret])
    assert out is not None
    assert out["request"] == {"url": "http://h/api/v1/x", "query_string": "token=%5BFiltered%5D&api_key=%5BFiltered%5D"
                              "&page=2", "headers": {"Content-Type": "application/json"}}
    assert "extra" not in out and "breadcrumbs" not in out
    assert out["exception"]["values"][0]["value"] == "failed with [Filtered] and [Filtered]"
    assert out["contexts"]["x"] == {"password": "[Filtered]", "note": "[Filtered]"}


def test_the_scrubber_drops_ignored_errors() -> None:
    class Outcome(Exception):
        pass

    error = Outcome("a stored failure")
    assert error_reporting.scrub({}, {"exc_info": (Outcome, error, None)}, secrets=[], ignore=(Outcome,)) is None


UNSET_PROBE = r"""
import asyncio, sys, threading
import httpx
from arq.worker import get_kwargs
from agent_service.app import create_app
from agent_service.config import load_settings
from agent_service.kit.fast_worker import FastWorker
from agent_service.worker import build_worker_settings

async def main():
    settings = load_settings(env_file=None)
    threads = {t.name for t in threading.enumerate()}
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers={"X-API-Key": sys.argv[1]}) as c:
            crash = await c.post("/api/v1/agents/crashing/invoke", json={"message": "x"})
            queued = await c.post("/api/v1/agents/crashing/invoke-async", json={"message": "x"})
    worker = FastWorker(**{**get_kwargs(build_worker_settings(settings)), "handle_signals": False, "burst": True})
    await worker.async_run()
    await worker.close()
    # asyncio's executor threads (DNS, SQLite) may linger: only the SDKs' own threads count
    new_threads = {t.name for t in threading.enumerate()} - threads
    new_threads = {n for n in new_threads if any(w in n.lower() for w in ("otel", "span", "export", "sentry"))}
    loaded = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("sentry_sdk", "opentelemetry")})
    print(crash.status_code, queued.status_code, worker.jobs_complete + worker.jobs_failed, loaded, sorted(new_threads))

asyncio.run(main())
"""


@pytest.mark.e2e
def test_with_the_settings_unset_neither_sdk_is_imported(env: dict[str, str], tmp_path: Any) -> None:
    """The web serves a 500 and queues a job, a worker runs it: `sentry_sdk` and `opentelemetry`
    are never imported, and no exporter thread is started."""
    unset = {k: v for k, v in env.items() if not k.startswith(("SENTRY_", "OTEL_"))}
    api_key = bootstrap_user(unset)
    child_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "OTEL_"))}, **unset}
    done = subprocess.run([sys.executable, "-c", UNSET_PROBE, api_key], env=child_env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "500 202 1 [] []", done.stdout[-3000:]
