"""Audit entries are written for logins, failed auth, key and user changes, invocations and cancels,
and read back through /api/v1/audit-logs with filters."""

from __future__ import annotations

from typing import Any

import httpx

from agent_service.audit.service import writer as audit_writer
from agent_service.config import Settings
from tests.support.apps import Client, add_user, app_client


async def entries(client: Client, admin: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    await audit_writer(client.app.state.deps).flush()
    resp = await client.get("/api/v1/audit-logs", params={"limit": 200, **params}, headers=admin)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def test_actions_are_audited_and_filterable(client: Client) -> None:
    admin = {"X-API-Key": await add_user(client.app, "auditor@example.com", admin=True,
                                         password="auditor password")}
    ok = await client.post("/api/v1/auth/token", json={"email": "auditor@example.com", "password": "auditor password"})
    await client.post("/api/v1/auth/token", json={"email": "auditor@example.com", "password": "wrong"})
    await client.get("/api/v1/agents", headers={"X-API-Key": "sk_live_" + "x" * 43})
    access = ok.json()["access_token"]
    await client.post("/api/v1/auth/refresh", json={"refresh_token": ok.json()["refresh_token"]})
    await client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {access}"})
    key = (await client.post("/api/v1/api-keys", json={"name": "k", "scopes": ["tasks:read"]})).json()
    await client.post("/api/v1/agents/echo/invoke", json={"message": "a"}, headers={"X-Request-ID": "audit-sync"})
    await client.post("/api/v1/agents/echo/stream", json={"message": "b"})
    task = (await client.post("/api/v1/agents/echo/invoke-async", json={"message": "c"})).json()
    await client.post(f"/api/v1/agents/tasks/{task['task_id']}/cancel")

    rows = await entries(client, admin)
    actions = [(r["action"], r["resource_type"]) for r in rows]
    for expected in [("LOGIN", "auth"), ("FAILED_AUTH", "auth"), ("LOGIN", "refresh_token"), ("LOGOUT", "auth"),
                     ("CREATE", "api_key"), ("EXECUTE", "agent"), ("CANCEL", "task")]:
        assert expected in actions, expected
    # wrong password, then an invalid key from the same address within a minute: the first is written,
    # the second folded into that address's window (its summary is written when the window closes)
    assert actions.count(("FAILED_AUTH", "auth")) == 1
    assert rows == sorted(rows, key=lambda r: (r["timestamp"], r["id"]), reverse=True)
    modes = sorted(r["metadata"]["mode"] for r in rows if r["action"] == "EXECUTE")
    assert modes == ["async", "stream", "sync"]
    created = next(r for r in rows if r["action"] == "CREATE")
    assert created["resource_id"] == key["id"] and created["status"] == 201 and created["actor"].startswith("api_key:")
    assert all(key["key"] not in str(r) and "auditor password" not in str(r) for r in rows)

    sync = await entries(client, admin, request_id="audit-sync")
    assert len(sync) == 1 and sync[0]["path"] == "/api/v1/agents/echo/invoke" and sync[0]["method"] == "POST"
    failed = await entries(client, admin, action="FAILED_AUTH")
    assert {r["status"] for r in failed} == {401}
    one = await client.get(f"/api/v1/audit-logs/{sync[0]['id']}", headers=admin)
    assert one.status_code == 200 and one.json() == sync[0]
    assert (await client.get("/api/v1/audit-logs/999999", headers=admin)).status_code == 404
    assert (await client.get("/api/v1/audit-logs/abc", headers=admin)).status_code == 404
    stats = (await client.get("/api/v1/audit-logs/stats", headers=admin)).json()
    assert stats["total"] == len(rows) and stats["by_action"]["FAILED_AUTH"] == 1
    bad = await client.get("/api/v1/audit-logs", params={"action": "DANCE", "since": "yesterday"}, headers=admin)
    assert bad.status_code == 422 and {e["path"] for e in bad.json()["errors"]} == {"query.action", "query.since"}


async def test_audit_read_needs_admin_or_scope(client: Client) -> None:
    assert (await client.get("/api/v1/audit-logs")).status_code == 403
    admin_key = await add_user(client.app, "boss@example.com", admin=True)
    reader = (await client.post("/api/v1/api-keys", json={"name": "r", "scopes": ["audit:read"]},
                                headers={"X-API-Key": admin_key})).json()["key"]
    assert (await client.get("/api/v1/audit-logs", headers={"X-API-Key": reader})).status_code == 200


async def test_forwarded_for_is_honoured_only_from_trusted_proxies(make_settings) -> None:  # type: ignore[no-untyped-def]
    for trusted, expected in (("", "127.0.0.1"), ("127.0.0.0/8", "203.0.113.9")):
        settings: Settings = make_settings(trusted_proxies=trusted)
        async with app_client(settings) as client:
            client._transport = httpx.ASGITransport(app=client.app, client=("127.0.0.1", 5000))
            admin = {"X-API-Key": await add_user(client.app, f"ip{len(trusted)}@example.com", admin=True)}
            headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9", "X-Request-ID": f"ip-{expected}"}
            await client.post("/api/v1/agents/echo/invoke", json={"message": "ip"}, headers=headers)
            [row] = await entries(client, admin, request_id=f"ip-{expected}")
            assert row["client_ip"] == expected
