"""Audit log bodies: what callers record, what is stored, and the list/stats query shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec

from agent_service.kit.schemas import Body

AuditAction = Literal["CREATE", "READ", "UPDATE", "DELETE", "EXECUTE", "LOGIN", "LOGOUT", "FAILED_AUTH", "CANCEL",
                      "EXPORT"]
AUDIT_ACTIONS: tuple[str, ...] = get_args(AuditAction)

Actor = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        description="Who acted: `user:<id>`, `api_key:<id>`, `system` or `anonymous`.",
        examples=["user:6f1c2d", "api_key:k_91ab", "system"],
    ),
]
ResourceType = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="Kind of resource: `agent`, `task`, `api_key`, ...")
]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
HttpStatus = Annotated[int, msgspec.Meta(ge=100, le=599, description="HTTP status of the audited request.")]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339 time with a UTC offset (e.g. `Z`).")]
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=200, description="Page size.")]
Cursor = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, description="Opaque `next_cursor` of the previous page.")
]
AuditId = Annotated[int, msgspec.Meta(ge=1)]


class AuditEntry(msgspec.Struct, kw_only=True):
    """One event as a caller records it; `timestamp` None means "now" at record time."""

    action: AuditAction
    resource_type: str
    actor: str = "anonymous"
    actor_user_id: str | None = None
    actor_api_key_id: str | None = None
    resource_id: str | None = None
    request_id: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    timestamp: datetime | None = None


class AuditRecord(msgspec.Struct, kw_only=True):
    """A stored audit row (also the shape of each line of an archive file)."""

    id: AuditId
    timestamp: datetime
    actor: Actor
    actor_user_id: str | None
    actor_api_key_id: str | None
    action: AuditAction
    resource_type: ResourceType
    resource_id: str | None
    request_id: str | None
    method: str | None
    path: str | None
    status: int | None
    client_ip: str | None
    user_agent: str | None
    metadata: dict[str, Any]


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditRecord]
    next_cursor: str | None = None


class AuditQuery(Body):
    """Filters of `GET /audit-logs`; all combine with AND. `since` is inclusive, `until` exclusive."""

    actor: Actor | None = None
    action: AuditAction | None = None
    resource_type: ResourceType | None = None
    resource_id: ShortText | None = None
    request_id: ShortText | None = None
    status: HttpStatus | None = None
    since: AwareTime | None = None
    until: AwareTime | None = None
    limit: PageLimit = 50
    cursor: Cursor | None = None


class AuditRange(Body):
    """Query of `GET /audit-logs/stats`: an optional time range (`since` inclusive, `until` exclusive)."""

    since: AwareTime | None = None
    until: AwareTime | None = None


class AuditStats(msgspec.Struct, kw_only=True):
    total: int
    unique_actors: int
    by_action: dict[str, int]
    by_resource_type: dict[str, int]
    since: datetime | None = None  # the requested range, echoed (None: open)
    until: datetime | None = None
    first_at: datetime | None = None  # oldest and newest row inside the range
    last_at: datetime | None = None


class AuditArchive(msgspec.Struct, kw_only=True, tag="archive_old_audit_logs", tag_field="type"):
    """The result of `archive_old_audit_logs`; `skipped` when another run held the archive dir."""

    archived_count: int
    deleted_count: int
    files_written: list[str]
    bytes_written: int
    cutoff_time: datetime
    status: Literal["success", "skipped"]
    started_at: datetime
    completed_at: datetime
