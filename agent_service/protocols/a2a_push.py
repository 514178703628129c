"""A2A push notification configs, delivered by the webhooks domain: a config is a webhook
subscription to one task's events (signed with Standard Webhooks, retried, SSRF-guarded at
creation and at every delivery). Its signing secret is shown once, in the created config's
`authentication` (`scheme: "StandardWebhooks"`); A2A's `token` is not echoed back (the signature
proves the sender instead). A config given inline with SendMessage becomes the task's own
webhook at submission, so no event of a fast task can be missed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agent_service.errors import NotFound
from agent_service.kit.deps import Deps
from agent_service.protocols.jsonrpc import INVALID_PARAMS, RpcError, params_as
from agent_service.webhooks import service as webhooks
from agent_service.webhooks.schemas import TASK_EVENTS, Subscription, SubscriptionCreate, SubscriptionQuery

SCHEME = "StandardWebhooks"


class ConfigParams(msgspec.Struct, rename="camel", kw_only=True):
    task_id: str
    url: str
    id: str | None = None
    token: str | None = None
    authentication: dict[str, Any] | None = None
    tenant: str | None = None


class ConfigRef(msgspec.Struct, rename="camel", kw_only=True):
    task_id: str
    id: str | None = None
    page_size: int | None = None
    page_token: str | None = None
    tenant: str | None = None


def _config(sub: Subscription, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": sub.id, "taskId": sub.task_id, "url": sub.url}
    if secret is not None:
        out["authentication"] = {"scheme": SCHEME, "credentials": secret}
    return out


def inline_url(config: dict[str, Any]) -> str:
    """The URL of a SendMessage's inline config (its own fields or v0.3's `pushNotificationConfig`)."""
    url = config.get("url")
    if not isinstance(url, str) or not url:
        raise RpcError(INVALID_PARAMS, "The push notification config needs a `url`.", reason="validation_error",
                       errors=[{"path": "$.configuration.taskPushNotificationConfig.url", "message": "Required"}])
    return url


async def _own(deps: Deps, owner_id: str, task_id: str, config_id: str) -> Subscription:
    sub = await webhooks.get_subscription(deps, owner_id, config_id)
    if sub.task_id != task_id:
        raise NotFound(f"No push notification config {config_id[:64]!r} for this task.", code="task_not_found")
    return sub


async def create(deps: Deps, owner_id: str, params: dict[str, Any]) -> dict[str, Any]:
    p = params_as(params, ConfigParams)
    created = await webhooks.create_subscription(
        deps, owner_id, SubscriptionCreate(url=p.url, events=list(TASK_EVENTS),  # type: ignore[arg-type]
                                           description="A2A push notification config"), task_id=p.task_id)
    return _config(created, created.secret)


async def get(deps: Deps, owner_id: str, params: dict[str, Any]) -> dict[str, Any]:
    p = params_as(params, ConfigRef)
    if p.id is None:
        raise RpcError(INVALID_PARAMS, "`id` names the config.", reason="validation_error",
                       errors=[{"path": "$.id", "message": "Required"}])
    return _config(await _own(deps, owner_id, p.task_id, p.id))


async def list_configs(deps: Deps, owner_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The task's configs (an owner holds at most WEBHOOK_MAX_SUBSCRIPTIONS: one pass over them)."""
    p = params_as(params, ConfigRef)
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = await webhooks.list_subscriptions(deps, owner_id, SubscriptionQuery(limit=100, cursor=cursor))
        found += [_config(s) for s in page.items if s.task_id == p.task_id]
        cursor = page.next_cursor
        if cursor is None:
            return {"configs": found, "nextPageToken": ""}


async def delete(deps: Deps, owner_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Idempotent: a config that is gone already is deleted as far as the caller can tell."""
    p = params_as(params, ConfigRef)
    if p.id is None:
        raise RpcError(INVALID_PARAMS, "`id` names the config.", reason="validation_error",
                       errors=[{"path": "$.id", "message": "Required"}])
    try:
        await _own(deps, owner_id, p.task_id, p.id)
    except NotFound:
        return {}
    await webhooks.delete_subscription(deps, owner_id, p.id)
    return {}
