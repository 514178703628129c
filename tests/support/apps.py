"""The app in process: an HTTP client over ASGI with the lifespan run, and users made straight in its database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from agent_service.app import create_app
from agent_service.config import Settings
from agent_service.identity import accounts as api_keys
from agent_service.identity import accounts as users
from agent_service.identity.schemas import SCOPES, USER_SCOPES, UserCreate


class Client(httpx.AsyncClient):
    """A request that brings its own `Authorization` goes without the client's default X-API-Key:
    the service refuses both at once (400 conflicting_credentials), and a test that passes a token
    means to be that token's caller. A request may still send both explicitly."""

    app: Any

    def build_request(self, method: str, url: Any, **kwargs: Any) -> httpx.Request:
        request = super().build_request(method, url, **kwargs)
        own = httpx.Headers(kwargs.get("headers") or {})
        if "authorization" in own and "x-api-key" not in own and "x-api-key" in request.headers:
            del request.headers["x-api-key"]
        return request


async def add_user(app: Any, email: str, *, admin: bool = False, scopes: tuple[str, ...] | None = None,
                   tier: str = "free", password: str = "correct horse battery") -> str:
    """Create a user in the app's database and return a fresh API key for them."""
    deps = app.state.deps
    roles: list[Any] = ["user", "admin"] if admin else ["user"]
    user = await users.create_user(deps, UserCreate(email=email, password=password, roles=roles, tier=tier))  # type: ignore[arg-type]
    granted = scopes or (SCOPES if admin else USER_SCOPES)
    return await api_keys.bootstrap_key(deps, user.id, name="test", scopes=granted, tier=tier)


@asynccontextmanager
async def app_client(settings: Settings, *, authenticated: bool = True) -> AsyncIterator[Client]:
    """The app for `settings`, lifespan and all, behind an in-process HTTP client that sends the
    API key of a fresh ordinary user (unless `authenticated=False`)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with Client(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            c.app = app
            if authenticated:
                c.headers["X-API-Key"] = await add_user(app, f"user-{uuid.uuid4().hex[:8]}@example.com")
            yield c
