"""/health/live and /health/ready (public)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context
from agent_service.kit.endpoint import operation, route
from agent_service.kit.io import json_response
from agent_service.kit.schemas import Health
from agent_service.ops import health


@operation(summary="Liveness", tag="Health", response=Health, public=True,
           description="Answers 200 while the process serves HTTP.")
async def live(request: Request) -> Response:
    return json_response(Health(status="ok"))


@operation(summary="Readiness", tag="Health", response=Health, public=True, errors=(503,),
           description="200 when Redis, the database and a fresh worker heartbeat are all there; "
                       "503 naming the failing component otherwise.")
async def ready(request: Request) -> Response:
    result = await health.readiness(context.deps(request))
    return json_response(result, status=200 if result.status == "ok" else 503)


routes = [route("/health/live", live, ["GET"]), route("/health/ready", ready, ["GET"])]
