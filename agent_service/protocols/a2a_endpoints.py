"""A2A over HTTP: the agent cards (public) and one JSON-RPC endpoint per agent,
POST /api/v1/a2a/{agent_id}. Every JSON-RPC outcome is an HTTP 200 whose body is the result or
the error object (A2A clients read errors from the body); streaming methods answer SSE whose
events are JSON-RPC responses, each with its event id."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from agent_service.agents import service as agents
from agent_service.errors import AppError, NotFound
from agent_service.kit import context, sse
from agent_service.kit.endpoint import Docs, Public, Scoped, endpoint, route
from agent_service.kit.io import json_response, read_body
from agent_service.protocols import a2a, a2a_card, a2a_compat, jsonrpc
from agent_service.protocols import a2a_schemas as schemas
from agent_service.protocols.jsonrpc import INVALID_REQUEST, METHOD_NOT_FOUND, RpcError

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")  # as tasks' events route checks it
CARD_HEADERS = {"Cache-Control": "public, max-age=300"}
V1_METHODS = (*a2a.SCOPES, *a2a.PUSH_METHODS)
AUDITED = {"SendMessage": ("EXECUTE", "agent"), "SendStreamingMessage": ("EXECUTE", "agent"),
           "CancelTask": ("CANCEL", "task"), "CreateTaskPushNotificationConfig": ("CREATE", "webhook"),
           "DeleteTaskPushNotificationConfig": ("DELETE", "webhook")}


class A2ARequest(msgspec.Struct, kw_only=True):
    """A JSON-RPC 2.0 request: a v1.0 method (or its v0.3 name) and its params object."""

    jsonrpc: Literal["2.0"]
    method: Annotated[str, msgspec.Meta(min_length=1, examples=["SendMessage"], description=(
        "SendMessage, SendStreamingMessage, GetTask, ListTasks, CancelTask, SubscribeToTask, or a v0.3 name "
        "(message/send, message/stream, tasks/get, tasks/cancel, tasks/resubscribe)."))]
    params: dict[str, Any] | None = None
    id: str | int | None = None


class RpcErrorObject(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: int
    message: str
    data: list[dict[str, Any]] | None = None


class A2AResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A JSON-RPC 2.0 response: `result` (SendMessageResponse, Task, ListTasksResponse, …) or `error`.
    Each event of a streaming method is one of these, its `result` a StreamResponse."""

    jsonrpc: Literal["2.0"] = "2.0"
    id: str | int | None = None
    result: dict[str, Any] | None = None
    error: RpcErrorObject | None = None


class _Envelope(msgspec.Struct):
    jsonrpc: str
    id: str | int | None
    result: Any


def _answer(rid: jsonrpc.RequestId, err: RpcError, request: Request | None = None) -> Response:
    headers = {"Cache-Control": "no-store", **err.headers}
    if err.http_status != 200 and request is not None:
        body = jsonrpc.problem_body(err, a2a.error_data(err), instance=request.url.path,
                                    request_id=context.request_id(request))
        return Response(body, status_code=err.http_status, media_type="application/problem+json", headers=headers)
    return Response(jsonrpc.error(rid, err, a2a.error_data(err)), media_type="application/json", headers=headers)


@endpoint(auth=Public(), docs=Docs(
    summary="The default agent's A2A card", tag="Protocols", response=schemas.AgentCard, errors=(404,),
    description="The A2A agent card of DEFAULT_AGENT (`/.well-known/agent-card.json`, A2A v1.0 with the v0.3 "
    "`url` fields too): its JSON-RPC URL, streaming, the API-key and bearer schemes. Every agent has its "
    "own card at `/api/v1/a2a/{agent_id}/.well-known/agent-card.json`."))
async def root_card(request: Request) -> Response:
    return _card(request, None)


@endpoint(auth=Public(), docs=Docs(
    summary="An agent's A2A card", tag="Protocols", response=schemas.AgentCard, errors=(404,),
    description="The A2A agent card of one agent: A2A clients resolve it from the agent's URL "
    "(`/api/v1/a2a/{agent_id}`) and send their JSON-RPC calls there."))
async def agent_card(request: Request) -> Response:
    return _card(request, request.path_params["agent_id"])


def _card(request: Request, agent_id: str | None) -> Response:
    deps = context.deps(request)
    base = str(request.base_url).rstrip("/")
    card = a2a_card.card(deps, agent_id, base=base, push=True)
    body = {**msgspec.to_builtins(card), **a2a_card.legacy_fields(card)}
    return json_response(body, headers=CARD_HEADERS)


@endpoint(auth=Scoped(), docs=Docs(
    summary="A2A JSON-RPC", tag="Protocols", request=A2ARequest, response=A2AResponse, errors=(400, 401, 413, 415),
    headers=("Last-Event-ID",),
    description="A2A v1.0's JSON-RPC binding (`SendMessage`, `SendStreamingMessage`, `GetTask`, `ListTasks`, "
    "`CancelTask`, `SubscribeToTask`) and v0.3's method names (`message/send`, `message/stream`, `tasks/get`, "
    "`tasks/cancel`, `tasks/resubscribe`) with v0.3's shapes. A message becomes one of your tasks (see the "
    "tasks API); `contextId` is your conversation session. A call's errors are JSON-RPC error objects (HTTP 200): "
    "-32601 method, -32602 params, -32001 task not found, -32002 not cancelable, -32004 unsupported, -32005 "
    "content type, -32000 ours (the ErrorInfo `reason` says which). A body that is no JSON-RPC request (-32700 "
    "not JSON, -32600 not a request object) is a 400 (413 too large, 415 not JSON) whose body is both the "
    "JSON-RPC error response and a problem. "
    "Streaming methods answer `text/event-stream` instead: each event's `data` is one such response whose result "
    "is a StreamResponse (the task first, then status and artifact updates, each with `metadata.eventId`); "
    "`SubscribeToTask` with `Last-Event-ID: <eventId>` replays everything after that event, none twice. An "
    "`A2A-Version` header other than 1.0 or 0.3 is -32009. "
    "Scopes per method: sending `agents:invoke`, reading and following `tasks:read`, cancelling "
    "`tasks:cancel`."))
async def a2a_rpc(request: Request) -> Response:
    deps = context.deps(request)
    agent_id = request.path_params["agent_id"]
    try:
        req = jsonrpc.parse(await _body(request, deps.settings.max_body_bytes))
    except RpcError as err:
        return _answer(err.rid, err, request)
    legacy = req.method in a2a_compat.METHODS
    method = a2a_compat.METHODS.get(req.method, req.method)
    try:
        _check(request, agent_id, method)
    except RpcError as err:
        err.rid = req.id
        return _answer(req.id, err, request)
    audited = AUDITED.get(method)
    target = agent_id if audited and audited[1] == "agent" else str(req.params.get("id") or req.params.get("taskId")
                                                                      or "")[:200] or None
    if audited:
        context.audit(request, audited[0], audited[1], target, protocol="a2a", method=req.method)
    call = a2a.Call(deps, context.caller(request), agent_id, request_id=context.request_id(request),
                    last_event_id=request.headers.get("last-event-id"))
    try:
        answer = await a2a.dispatch(call, method, a2a_compat.params_in(req.method, req.params) if legacy
                                    else req.params)
    except RpcError as err:
        if audited:
            context.audit(request, audited[0], audited[1], target, protocol="a2a", method=req.method, error=err.code)
        return _answer(req.id, err)
    if audited:
        context.audit(request, audited[0], audited[1], target, protocol="a2a", method=req.method,
                      task_id=answer.task_id)
    if answer.stream is not None:
        return sse.response(_events(req.id, req.method if legacy else None, answer.stream))
    value = a2a_compat.result_out(req.method, answer.value) if legacy else answer.value
    return Response(jsonrpc.result(req.id, value), media_type="application/json", headers={"Cache-Control": "no-store"})


async def _body(request: Request, limit: int) -> bytes:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise RpcError(INVALID_REQUEST, "Send the request as application/json.", reason="unsupported_media_type",
                       http_status=415)
    try:
        return await read_body(request, limit)
    except AppError as exc:  # too large
        raise RpcError(INVALID_REQUEST, exc.detail, reason=exc.code, status=exc.status,
                       http_status=exc.status) from None


def _check(request: Request, agent_id: str, method: str) -> None:
    resume = request.headers.get("last-event-id")
    if resume is not None and not _EVENT_ID.match(resume):
        raise RpcError(INVALID_REQUEST, "Last-Event-ID is not an event id (`<ms>-<seq>`, the `metadata.eventId` "
                       "of an event).", reason="invalid_last_event_id", http_status=400)
    if method not in V1_METHODS:
        raise RpcError(METHOD_NOT_FOUND, "Method not found", reason="method_not_found")
    version = request.headers.get("a2a-version", "").strip()
    if version and version.split(".")[:2] not in (["1", "0"], ["0", "3"]):
        raise RpcError(schemas.VERSION_NOT_SUPPORTED, f"A2A version {version[:20]!r} is not supported (1.0, 0.3).",
                       reason="version_not_supported")
    if agents.registry(context.deps(request)).get(agent_id) is None:
        err = NotFound(f"No agent named {agent_id[:100]!r}.", code="agent_not_found")
        raise jsonrpc.from_app_error(err, a2a.CODES)


async def _events(rid: jsonrpc.RequestId, legacy: str | None, stream: AsyncIterator[a2a.Item]) -> AsyncIterator[
        sse.Item]:
    try:
        async for value, event_id in stream:
            if value is None:
                yield sse.Item(None)
                continue
            body = a2a_compat.result_out(legacy, value) if legacy else value
            yield sse.Item(_Envelope("2.0", rid, body), event_id)
    except AppError as exc:  # after the first byte an error is one more event: a JSON-RPC error object
        err = jsonrpc.from_app_error(exc, a2a.CODES)
        yield sse.Item(_ErrorEnvelope("2.0", rid, {"code": err.code, "message": err.message,
                                                   "data": a2a.error_data(err)}))
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _ErrorEnvelope(msgspec.Struct):
    jsonrpc: str
    id: str | int | None
    error: dict[str, Any]


root_routes = [route("/.well-known/agent-card.json", root_card, ["GET"])]
routes = [
    route("/a2a/{agent_id}/.well-known/agent-card.json", agent_card, ["GET"]),
    route("/a2a/{agent_id}", a2a_rpc, ["POST"]),
]
