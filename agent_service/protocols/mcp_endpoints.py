"""MCP's streamable HTTP transport at POST /api/v1/mcp, stateless: no Mcp-Session-Id, no
server-initiated stream (GET is a 405, as the transport allows), every request self-contained.
A request is answered with JSON, or (a tool run with a progress token) with SSE: its progress
notifications, then its response. A notification is accepted with a 202."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from agent_service.errors import AppError
from agent_service.kit import context, sse
from agent_service.kit.endpoint import Docs, Scoped, endpoint, route
from agent_service.kit.io import read_body
from agent_service.protocols import jsonrpc, mcp
from agent_service.protocols.jsonrpc import INVALID_REQUEST, RpcError

NO_STORE = {"Cache-Control": "no-store"}


class McpRequest(msgspec.Struct, kw_only=True):
    """A JSON-RPC 2.0 request (or, without `id`, a notification)."""

    jsonrpc: Literal["2.0"]
    method: Annotated[str, msgspec.Meta(min_length=1, examples=["tools/list"], description=(
        "initialize, ping, tools/list, tools/call, or a notification (notifications/initialized, …)."))]
    params: dict[str, Any] | None = None
    id: str | int | None = None


class McpError(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class McpResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A JSON-RPC 2.0 response: `result` (InitializeResult, ListToolsResult, CallToolResult, …) or
    `error`. `{}` answers a notification (202)."""

    jsonrpc: Literal["2.0"] = "2.0"
    id: str | int | None = None
    result: dict[str, Any] | None = None
    error: McpError | None = None


class _Message(msgspec.Struct, omit_defaults=True):
    """One SSE event: a notification (`method`, `params`) or the response (`id`, `result`)."""

    jsonrpc: str
    method: str | None = None
    params: dict[str, Any] | None = None
    id: str | int | None = None
    result: dict[str, Any] | None = None


def _data(err: RpcError) -> dict[str, Any] | None:
    if err.reason is None:
        return None
    return {"reason": err.reason, **({"errors": err.errors} if err.errors else {})}


def _answer(request: Request, err: RpcError) -> Response:
    if err.http_status != 200:
        body = jsonrpc.problem_body(err, _data(err), instance=request.url.path, request_id=context.request_id(request))
        return Response(body, status_code=err.http_status, media_type="application/problem+json", headers=NO_STORE)
    return Response(jsonrpc.error(err.rid, err, _data(err)), media_type="application/json", headers=NO_STORE)


def _check_transport(request: Request) -> None:
    """The transport's own rules: a browser page's Origin must be one we allow (DNS rebinding), and
    a stated protocol version must be one we speak."""
    origin = request.headers.get("origin")
    allowed = context.deps(request).settings.cors_origin_list
    if origin is not None and "*" not in allowed and origin not in allowed:
        raise RpcError(INVALID_REQUEST, "This Origin may not call the MCP endpoint.", reason="origin_not_allowed",
                       http_status=403)
    version = request.headers.get("mcp-protocol-version")
    if version is not None and version not in mcp.VERSIONS:
        spoken = ", ".join(mcp.VERSIONS)
        raise RpcError(INVALID_REQUEST, f"Unsupported MCP-Protocol-Version; this server speaks {spoken}.",
                       reason="unsupported_protocol_version", http_status=400)


@endpoint(auth=Scoped(), docs=Docs(
    summary="MCP (streamable HTTP)", tag="Protocols", request=McpRequest, response=McpResponse, also=(202,),
    errors=(400, 401, 403, 405, 413, 415),
    description="The Model Context Protocol's streamable HTTP transport in stateless mode (protocol 2025-11-25, "
    "2025-06-18 and 2025-03-26; no session id, so any server answers). Every available agent is a tool whose input "
    "schema is the invoke body (`message`, `session_id`, `metadata`); `tools/call` runs it, and with a "
    "`_meta.progressToken` answers `text/event-stream` instead: a `notifications/progress` per chunk as it "
    "arrives (its `message` the chunk), then the response. Calls that may outlast a client's timeout: the tool "
    "`submit` queues one as a background task (see the tasks API) and `get_result` reads it (`wait_seconds` "
    "≤ 50 waits for its end). Tool failures are results with `isError: true`; an unknown method or tool is a "
    "JSON-RPC error (HTTP 200); a body that is no JSON-RPC message a 400 whose body is the JSON-RPC error and "
    "a problem. A notification is a 202. Tools need `agents:invoke` (`get_result`: `tasks:read`)."))
async def mcp_rpc(request: Request) -> Response:
    deps = context.deps(request)
    try:
        _check_transport(request)
        req = jsonrpc.parse(await _body(request, deps.settings.max_body_bytes))
    except RpcError as err:
        return _answer(request, err)
    if req.is_notification:
        return Response(b"{}", status_code=202, media_type="application/json", headers=NO_STORE)
    call = mcp.Call(deps, context.caller(request), request_id=context.request_id(request))
    try:
        outcome = await mcp.dispatch(call, req.method, req.params)
    except RpcError as err:
        err.rid = req.id
        return _answer(request, err)
    if outcome.audit is not None:
        agent, tool, details = outcome.audit
        context.audit(request, "EXECUTE", "agent", agent, protocol="mcp", tool=tool, **details)
    if outcome.stream is not None:
        return sse.response(_events(req.id, outcome.stream))
    return Response(jsonrpc.result(req.id, outcome.value), media_type="application/json", headers=NO_STORE)


async def _body(request: Request, limit: int) -> bytes:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise RpcError(INVALID_REQUEST, "Send the message as application/json.", reason="unsupported_media_type",
                       http_status=415)
    try:
        return await read_body(request, limit)
    except AppError as exc:  # too large
        raise RpcError(INVALID_REQUEST, exc.detail, reason=exc.code, http_status=exc.status) from None


async def _events(rid: jsonrpc.RequestId, stream: AsyncIterator[dict[str, Any]]) -> AsyncIterator[sse.Item]:
    try:
        async for message in stream:
            if "method" in message:
                yield sse.Item(_Message("2.0", method=message["method"], params=message["params"]))
            else:
                yield sse.Item(_Message("2.0", id=rid, result=message["result"]))
    except AppError as exc:  # after the first byte: the call's answer is an error result
        yield sse.Item(_Message("2.0", id=rid, result=mcp.text_result(exc.detail, error=True)))
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


routes = [route("/mcp", mcp_rpc, ["POST"])]
