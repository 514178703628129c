"""Identity bodies: tokens, the caller, users and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agent_service.kit.schemas import Body

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
NewPassword = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]
Role = Literal["user", "admin"]
Tier = Literal["free", "pro", "enterprise"]
Scope = Literal["agents:invoke", "tasks:read", "tasks:cancel", "sessions", "api_keys:manage", "audit:read", "admin"]
OpaqueToken = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Name = Annotated[str, msgspec.Meta(max_length=200)]


class TokenRequest(Body):
    email: Email
    password: Password


class RefreshRequest(Body):
    refresh_token: OpaqueToken


class LogoutRequest(Body):
    refresh_token: OpaqueToken | None = None


class TokenResponse(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class Me(msgspec.Struct, kw_only=True):
    user_id: str
    email: str
    roles: list[str]
    scopes: list[str]
    tier: str
    auth_method: Literal["jwt", "api_key", "oidc"]
    api_key_id: str | None = None


class UserCreate(Body):
    email: Email
    password: NewPassword
    name: Name = ""
    roles: Annotated[list[Role], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["user"]
    )
    tier: Tier | None = None


class UserUpdate(Body):
    name: Name | None = None
    roles: Annotated[list[Role], msgspec.Meta(min_length=1, max_length=2)] | None = None
    is_active: bool | None = None
    tier: Tier | None = None
    monthly_token_budget: Annotated[int, msgspec.Meta(ge=-1, le=10**15, description=(
        "Tokens this user may use per calendar month (UTC); 0: no budget; -1: back to the tier's "
        "(BUDGET_TOKENS_<TIER>)."))] | None = None


class UserOut(msgspec.Struct, kw_only=True):
    id: str
    email: str
    name: str
    roles: list[str]
    tier: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    monthly_token_budget: int | None = None  # the user's own (None: the tier's)


class UserPage(msgspec.Struct, kw_only=True):
    items: list[UserOut]
    next_cursor: str | None


class ApiKeyCreate(Body):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=7)]
    tier: Tier = "free"
    expires_in_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] | None = None


class ApiKeyOut(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    name: str
    prefix: str
    scopes: list[str]
    tier: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut, kw_only=True):
    key: str  # shown once


class ApiKeyPage(msgspec.Struct, kw_only=True):
    items: list[ApiKeyOut]
    next_cursor: str | None


SCOPES = (
    "agents:invoke",
    "tasks:read",
    "tasks:cancel",
    "sessions",
    "api_keys:manage",
    "audit:read",
    "admin",
)
# scopes only an admin may hand out
ADMIN_ONLY_SCOPES = frozenset({"admin", "audit:read"})
# what a signed-in user holds: every scope an ordinary user can use
USER_SCOPES = tuple(s for s in SCOPES if s not in ADMIN_ONLY_SCOPES)
TIERS = ("free", "pro", "enterprise")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    email: str
    roles: tuple[str, ...] = ("user",)
    scopes: tuple[str, ...] = USER_SCOPES
    tier: str = "free"
    api_key_id: str | None = None
    token_jti: str | None = None
    token_exp: int | None = None
    stream_task: str | None = None  # a stream token's caller: that task's events, nothing else

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles and (self.api_key_id is None or "admin" in self.scopes)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def actor(self) -> str:
        """How audit rows and logs name this caller."""
        return f"api_key:{self.api_key_id}" if self.api_key_id else f"user:{self.user_id}"


class StreamToken(msgspec.Struct, kw_only=True):
    """Opens one task's event stream as `…/events?token=…` (for EventSource, which cannot send
    headers). Valid for `expires_in` seconds to start the stream; a stream already open goes on."""

    token: str
    expires_in: int
    task_id: str


class BlacklistCleanup(msgspec.Struct, kw_only=True, tag="cleanup_token_blacklist", tag_field="type"):
    """The result of `cleanup_token_blacklist`."""

    scanned: int
    removed: int
    remaining: int
    ttl_restored: int
    status: Literal["success"]
    started_at: datetime
    completed_at: datetime


class PasswordForm(msgspec.Struct, kw_only=True):
    """The OAuth2 password-grant form the docs' Authorize button posts to `/auth/token`."""

    username: str
    password: str
    grant_type: Literal["password"] = "password"
