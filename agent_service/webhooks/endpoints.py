"""/api/v1/webhooks: the caller's webhook subscriptions and their deliveries; and the deliveries of
one task (/agents/tasks/{task_id}/webhook-deliveries). Someone else's subscription is a 404.

A subscription pushes task results to a URL, so it needs what reading them needs: `tasks:read`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from agent_service.kit import context
from agent_service.kit.endpoint import Docs, Link, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_json, read_query
from agent_service.webhooks import service
from agent_service.webhooks.schemas import (
    Delivery,
    DeliveryPage,
    DeliveryQuery,
    SecretRotated,
    Subscription,
    SubscriptionCreate,
    SubscriptionCreated,
    SubscriptionPage,
    SubscriptionQuery,
    SubscriptionUpdate,
)

SCOPE = "tasks:read"
TAG = "Webhooks"
NO_STORE = {"Cache-Control": "no-store"}  # an answer with a secret in it is never cached
SIGNING = ("Every delivery is a POST of `{type, timestamp, data}` (for task events `data` is the task's status as "
           "GET /agents/tasks/{task_id}/status returns it) signed per Standard Webhooks: `webhook-id` (the same "
           "for every attempt: dedupe on it), `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 "
           "of \"{id}.{timestamp}.{body}\">` under the secret). A delivery that does not get a 2xx is retried "
           "after 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h and 9 h (with jitter; a day in all), then "
           "fails; a subscription whose deliveries all fail for a day is disabled, with the reason in "
           "`disabled_reason`.")


def _sub_id(request: Request) -> str:
    return str(request.path_params["webhook_id"])


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Subscribe to events", tag=TAG, request=SubscriptionCreate, response=SubscriptionCreated,
        status=201, errors=(400, 401, 403, 409, 413, 415, 422),
        links=(Link(name="ListDeliveries", operation="list_webhook_deliveries",
                    parameters={"webhook_id": "$response.body#/id"},
                    description="What was sent to the new subscription, attempt by attempt."),),
        description="Register a URL for task events (`task.succeeded`, `task.failed`, `task.cancelled`, "
        "`task.retrying`) and `batch.completed`; all of them when `events` is left out. The answer carries the "
        "signing `secret` (`whsec_…`), shown only here. The URL must be http(s) and resolve only to public "
        "addresses (a 422 on `$.url` otherwise). At most WEBHOOK_MAX_SUBSCRIPTIONS per user (409). " + SIGNING,
    ),
)
async def create_webhook(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "CREATE", "webhook")
    body = await read_json(request, SubscriptionCreate, limit=deps.settings.max_body_bytes)
    out = await service.create_subscription(deps, context.owner_id(request), body)
    context.audit(request, "CREATE", "webhook", out.id, events=out.events)
    return json_response(out, status=201, headers={"Location": f"/api/v1/webhooks/{out.id}", **NO_STORE})


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="List my webhook subscriptions", tag=TAG, response=SubscriptionPage, query=SubscriptionQuery,
        errors=(401, 403, 422),
        description="Newest first; paginate with `limit` and the opaque `cursor`. Secrets are never shown again.",
    ),
)
async def list_webhooks(request: Request) -> Response:
    q = read_query(request, SubscriptionQuery)
    return json_response(await service.list_subscriptions(context.deps(request), context.owner_id(request), q))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Get a webhook subscription", tag=TAG, response=Subscription, errors=(401, 403, 404),
        description="Its URL, events and state: `enabled`, and once disabled `disabled_reason`; `failing_since` "
        "while its deliveries fail. Someone else's is a 404.",
    ),
)
async def get_webhook(request: Request) -> Response:
    return json_response(await service.get_subscription(context.deps(request), context.owner_id(request),
                                                        _sub_id(request)))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Change a webhook subscription", tag=TAG, request=SubscriptionUpdate, response=Subscription,
        errors=(400, 401, 403, 404, 413, 415, 422),
        description="Change its URL (checked as at creation), events or description; `enabled: false` pauses it "
        "and `enabled: true` enables it again, also after it was disabled for failing.",
    ),
)
async def update_webhook(request: Request) -> Response:
    deps = context.deps(request)
    context.audit(request, "UPDATE", "webhook", _sub_id(request))
    body = await read_json(request, SubscriptionUpdate, limit=deps.settings.max_body_bytes)
    return json_response(await service.update_subscription(deps, context.owner_id(request), _sub_id(request), body))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Delete a webhook subscription", tag=TAG, status=204, errors=(401, 403, 404),
        description="Nothing more is sent to it, and its delivery history goes with it.",
    ),
)
async def delete_webhook(request: Request) -> Response:
    context.audit(request, "DELETE", "webhook", _sub_id(request))
    await service.delete_subscription(context.deps(request), context.owner_id(request), _sub_id(request))
    return Response(status_code=204)


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Rotate a webhook's signing secret", tag=TAG, response=SecretRotated, errors=(401, 403, 404),
        description="A new secret, shown only here. For 24 hours deliveries carry a signature by the old secret "
        "too (space-separated in `webhook-signature`), so the receiver can switch without losing a message.",
    ),
)
async def rotate_webhook_secret(request: Request) -> Response:
    context.audit(request, "UPDATE", "webhook", _sub_id(request), rotated=True)
    out = await service.rotate_secret(context.deps(request), context.owner_id(request), _sub_id(request))
    return json_response(out, headers=NO_STORE)


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="List a subscription's deliveries", tag=TAG, response=DeliveryPage, query=DeliveryQuery,
        errors=(401, 403, 404, 422),
        description="Newest first, each with its attempts (status code, latency, error, the start of the answer) "
        "and, while `pending`, when the next one is due. " + SIGNING,
    ),
)
async def list_webhook_deliveries(request: Request) -> Response:
    q = read_query(request, DeliveryQuery)
    return json_response(await service.list_deliveries(context.deps(request), context.owner_id(request),
                                                       _sub_id(request), q))


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="Send a delivery again", tag=TAG, response=Delivery, status=202, errors=(401, 403, 404, 409),
        description="Attempt it again now, under the same `webhook-id`, retried on the schedule from its start if "
        "it fails. A disabled subscription must be enabled first (409).",
    ),
)
async def redeliver_webhook(request: Request) -> Response:
    delivery_id = str(request.path_params["delivery_id"])
    context.audit(request, "EXECUTE", "webhook_delivery", delivery_id)
    out = await service.redeliver(context.deps(request), context.owner_id(request), _sub_id(request), delivery_id)
    return json_response(out, status=202)


@endpoint(
    auth=Scoped(SCOPE),
    docs=Docs(
        summary="List a task's webhook deliveries", tag=TAG, response=DeliveryPage, query=DeliveryQuery,
        errors=(401, 403, 404, 422),
        description="What was sent about this task: to its own `webhook` (`subscription_id` null) and to my "
        "subscriptions, each with its attempts. Someone else's task is a 404.",
    ),
)
async def list_task_webhook_deliveries(request: Request) -> Response:
    q = read_query(request, DeliveryQuery)
    page = await service.list_task_deliveries(context.deps(request), str(request.path_params["task_id"]), q,
                                              owner_id=context.owner_id(request), is_admin=context.is_admin(request))
    return json_response(page)


routes = [
    route("/agents/tasks/{task_id}/webhook-deliveries", list_task_webhook_deliveries, ["GET"]),
    route("/webhooks", create_webhook, ["POST"]),
    route("/webhooks", list_webhooks, ["GET"]),
    route("/webhooks/{webhook_id}", get_webhook, ["GET"]),
    route("/webhooks/{webhook_id}", update_webhook, ["PATCH"]),
    route("/webhooks/{webhook_id}", delete_webhook, ["DELETE"]),
    route("/webhooks/{webhook_id}/rotate-secret", rotate_webhook_secret, ["POST"]),
    route("/webhooks/{webhook_id}/deliveries", list_webhook_deliveries, ["GET"]),
    route("/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", redeliver_webhook, ["POST"]),
]
