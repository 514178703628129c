"""The MCP facade judged by the official MCP SDK (`mcp`) as its client, over streamable HTTP
against real uvicorn + a worker: list the tools (every available agent, plus submit/get_result),
call one with a progress callback (a notification per chunk, as it arrives), the long-call path
over our tasks, tool errors as results, protocol errors as JSON-RPC errors, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support.processes import Live, bootstrap_user
from tests.support.stack import audit_rows, status
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

WORDS = " ".join(f"w{i}" for i in range(8))


@asynccontextmanager
async def connect(base: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(f"{base}/api/v1/mcp", http_client=http)) as client:
        yield client


async def test_tools_are_the_agents_and_a_call_reports_progress(live_service: Live) -> None:
    live = live_service
    async with connect(live.base, live.headers) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert {"echo", "submit", "get_result"} <= set(tools)
        assert "simple_llm_agent" not in tools  # not configured here: not available, not a tool
        schema = tools["echo"].input_schema
        assert schema["type"] == "object" and schema["required"] == ["message"]
        assert {"message", "session_id", "metadata"} <= set(schema["properties"])

        seen: list[tuple[float, str | None]] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            seen.append((value, message))

        result = await mcp.call_tool("echo", {"message": WORDS}, progress_callback=progress)
        assert not result.is_error and result.content[0].text == WORDS
        assert [v for v, _ in seen] == list(range(1, 9))
        assert "".join(m or "" for _, m in seen) == WORDS

        plain = await mcp.call_tool("echo", {"message": "no progress asked"})
        assert plain.content[0].text == "no progress asked"


@pytest.fixture
def people(live_service: Live, env: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"admin": {"X-API-Key": bootstrap_user(env, "auditor@example.com", admin=True)},
            "other": {"X-API-Key": bootstrap_user(env, "other@example.com")}}


async def test_long_calls_are_our_tasks(live_service: Live, people: dict[str, dict[str, str]]) -> None:
    live = live_service
    admin, other = people["admin"], people["other"]
    async with connect(live.base, live.headers) as mcp:
        submitted = await mcp.call_tool("submit", {"agent": "echo", "message": WORDS, "stream": True,
                                                   "metadata": {"delay": 0.05}})
        assert not submitted.is_error
        task_id = submitted.structured_content["task_id"]
        done = await mcp.call_tool("get_result", {"task_id": task_id, "wait_seconds": 20})
        assert not done.is_error and done.content[0].text == WORDS
        assert done.structured_content["state"] == "SUCCESS"
        assert status(live.base, live.headers, task_id)["result"]["content"] == WORDS  # one of our tasks

        async with connect(live.base, other) as theirs:  # another user's task is not found
            missing = await theirs.call_tool("get_result", {"task_id": task_id})
        assert missing.is_error and missing.structured_content["code"] == "task_not_found"
    wait_until(lambda: any(r["metadata"].get("protocol") == "mcp" and r["metadata"].get("task_id") == task_id
                           for r in audit_rows(live.base, admin, resource_type="agent")),
               timeout=10, interval=0.1, message="no audit row of the MCP submit")


async def test_tool_errors_are_results_and_protocol_errors_are_json_rpc(live_service: Live) -> None:
    live = live_service
    async with connect(live.base, live.headers) as mcp:
        bad = await mcp.call_tool("echo", {"message": ""})
        assert bad.is_error and bad.structured_content["errors"][0]["path"] == "$.message"
        failing = await mcp.call_tool("echo", {"message": "x", "metadata": {"fail": "permanent"}})
        assert failing.is_error and "permanent" in failing.content[0].text
        with pytest.raises(MCPError) as unknown:
            await mcp.call_tool("no_such_agent", {"message": "x"})
        assert unknown.value.error.code == -32602


@pytest.mark.parametrize(("content", "status_code", "code"), [
    (b"{nope", 400, -32700),
    (b"[1, 2]", 400, -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "resources/list"}', 200, -32601),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}', 200, -32602),
])
async def test_raw_bad_input(live_service: Live, content: bytes, status_code: int, code: int) -> None:
    live = live_service
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(f"{live.base}/api/v1/mcp", content=content,
                               headers={**live.headers, "Content-Type": "application/json",
                                        "Accept": "application/json, text/event-stream"})
        assert (resp.status_code, resp.json()["error"]["code"]) == (status_code, code), resp.text
        note = await http.post(f"{live.base}/api/v1/mcp", json={"jsonrpc": "2.0", "method": "notifications/x"},
                               headers=live.headers)
        assert note.status_code == 202
        assert (await http.get(f"{live.base}/api/v1/mcp", headers=live.headers)).status_code == 405
        assert (await http.post(f"{live.base}/api/v1/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                headers={**live.headers, "Origin": "https://evil.example"})).status_code == 403
        assert (await http.post(f"{live.base}/api/v1/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
                ).status_code == 401
