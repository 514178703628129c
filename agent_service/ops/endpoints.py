"""/health/live, /health/ready and /metrics (public, /metrics behind METRICS_TOKEN when set), and
/api/v1/jobs, the admin overview of the job system."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from agent_service.errors import Unauthorized
from agent_service.kit import context
from agent_service.kit.endpoint import Docs, Public, Scoped, endpoint, route
from agent_service.kit.io import json_response
from agent_service.ops import health, metrics, service
from agent_service.ops.schemas import Health, JobsOverview


@endpoint(
    auth=Public(),
    docs=Docs(summary="Liveness", tag="Health", response=Health,
              description="Answers 200 while the process serves HTTP."),
)
async def live(request: Request) -> Response:
    return json_response(Health(status="ok"))


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="Readiness", tag="Health", response=Health, errors=(503,),
        description="200 when Redis, the database and a fresh worker heartbeat are all there; "
        "503 naming the failing component otherwise.",
    ),
)
async def ready(request: Request) -> Response:
    result = await health.readiness(context.deps(request))
    return json_response(result, status=200 if result.status == "ok" else 503)


def _check_metrics_token(request: Request) -> None:
    token = context.deps(request).settings.metrics_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("Send `Authorization: Bearer <METRICS_TOKEN>`.", code="invalid_metrics_token",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="Prometheus metrics", tag="Admin", errors=(401,), media_type="text/plain",
        description="HTTP requests by route template, status and latency; jobs started, succeeded, failed, "
        "retried, cancelled and deferred by `task_kind` (agent jobs and maintenance jobs); job duration "
        "and enqueue-to-start latency; queue depth and backlog age; workers alive and their heartbeat "
        "age; rate-limit rejections. No label is named `job` or `instance` (Prometheus' own). Needs "
        "`Authorization: Bearer <METRICS_TOKEN>` when that setting is set.",
    ),
)
async def metrics_endpoint(request: Request) -> Response:
    _check_metrics_token(request)
    body = await metrics.render(context.deps(request), request.app.state.http_metrics)
    return Response(body, media_type=metrics.CONTENT_TYPE)


@endpoint(
    auth=Scoped("admin"),
    docs=Docs(
        summary="Job system overview", tag="Admin", response=JobsOverview, errors=(401, 403, 503),
        description="Queue depth (queued, deferred, in progress, retrying), the workers alive with their last "
        "heartbeat and counters, completions and failures per minute over the last 15 minutes, "
        "and the most recent failures with their errors.",
    ),
)
async def overview(request: Request) -> Response:
    return json_response(await service.overview(context.deps(request)), headers={"Cache-Control": "no-store"})


routes = [route("/health/live", live, ["GET"]), route("/health/ready", ready, ["GET"]),
          route("/metrics", metrics_endpoint, ["GET"])]
api_routes = [route("/jobs", overview, ["GET"])]
