"""The shape every error response must have: problem+json with a status, title, detail, type and request id."""

from __future__ import annotations

import httpx


def assert_problem(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = resp.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert body["request_id"] == resp.headers["x-request-id"]
    assert "Traceback" not in resp.text and "Error(" not in resp.text
    if code:
        assert body["code"] == code
    return body
