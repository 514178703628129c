"""/api/v1/usage: what my agent runs used (tokens, cost), grouped, and my budget this month."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context
from agent_service.kit.endpoint import Docs, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_query
from agent_service.usage import service
from agent_service.usage.schemas import UsageQuery, UsageReport


@endpoint(
    auth=Scoped("tasks:read"),
    docs=Docs(
        summary="Get my usage", tag="Background Jobs", response=UsageReport, query=UsageQuery,
        errors=(401, 403, 422),
        description="Tokens (in, out) and cost of my agent runs, background and synchronous, grouped by `day` "
        "(UTC), `agent`, `key` (the API key that submitted) or `model`, between `since` (inclusive) and `until` "
        "(exclusive); with my monthly token budget (`limit` null: none), what is used and held, and when it "
        "resets. The cost is priced by MODEL_PRICES when the run ended (null: no price for the model). Admins "
        "read anyone's with `owner`, or everyone's without it.",
    ),
)
async def get_usage(request: Request) -> Response:
    report = await service.report(context.deps(request), read_query(request, UsageQuery),
                                  owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    return json_response(report, headers={"Cache-Control": "no-store"})


routes = [route("/usage", get_usage, ["GET"])]
