"""Who is calling: the result of authentication, passed to services as a plain value."""

from __future__ import annotations

import msgspec

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

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles and (self.api_key_id is None or "admin" in self.scopes)

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def actor(self) -> str:
        """How audit rows and logs name this caller."""
        return f"api_key:{self.api_key_id}" if self.api_key_id else f"user:{self.user_id}"
