"""Identity helpers shared by the auth and security tests: route paths, headers, sign-in,
people with a key and a token."""

from __future__ import annotations

from typing import Any

from tests.support.apps import Client, add_user

ME = "/api/v1/auth/me"
TOKEN = "/api/v1/auth/token"
KEYS = "/api/v1/api-keys"
USERS = "/api/v1/users"
PASSWORD = "alice's long password"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key_header(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def login(client: Client, email: str, password: str) -> dict[str, Any]:
    resp = await client.post(TOKEN, json={"email": email, "password": password})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def me(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    resp = await client.get(ME, headers=headers)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def mint(client: Client, headers: dict[str, str], scopes: list[str], **extra: Any) -> dict[str, Any]:
    resp = await client.post(KEYS, json={"name": "k", "scopes": scopes, **extra}, headers=headers)
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


class Person:
    def __init__(self, email: str, key: str, user_id: str, tokens: dict[str, Any]) -> None:
        self.email, self.key, self.user_id, self.tokens = email, key, user_id, tokens

    @property
    def jwt(self) -> dict[str, str]:
        return bearer(self.tokens["access_token"])

    @property
    def api_key(self) -> dict[str, str]:
        return key_header(self.key)


async def person(client: Client, name: str, *, admin: bool = False, **kw: Any) -> Person:
    email = f"{name}@example.com"
    key = await add_user(client.app, email, admin=admin, password=PASSWORD, **kw)
    tokens = await login(client, email, PASSWORD)
    return Person(email, key, (await me(client, key_header(key)))["user_id"], tokens)
