"""MCP's methods over our agents and tasks (streamable HTTP, stateless: no session, so any web
process answers any request). Each available agent is a tool whose input schema is our invoke
body; `tools/call` runs it (with a progress token: a progress notification per chunk, as it
arrives). Long calls use two tools over our tasks, `submit` and `get_result`: any MCP client can
call tools, while the tasks extension needs a client that implements it, and a submitted call is
an ordinary task (the tasks API, the dashboard, cancel) that outlives any client's timeout.

Failures of a tool are results with `isError: true` (the model reads them and may correct its
arguments); only protocol faults (unknown method or tool, malformed params) are JSON-RPC errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import msgspec

from agent_service.agents import service as agents
from agent_service.agents.schemas import InvokeAsyncRequest, InvokeRequest, StreamChunk, StreamDone
from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller
from agent_service.kit.io import field_errors
from agent_service.kit.sse import StreamError
from agent_service.protocols import waiting
from agent_service.protocols.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, SERVER_ERROR, RpcError
from agent_service.tasks import service as tasks
from agent_service.tasks.schemas import FINISHED_STATES, JobResult

VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")  # newest first
SUBMIT, GET_RESULT = "submit", "get_result"
MAX_WAIT = 50.0  # get_result's longest wait: under a client's usual 60 s request timeout
INSTRUCTIONS = ("Each tool is an agent: call it with `message` (and optionally `session_id`, `metadata`). For work "
                "that may take longer than your request timeout, `submit` it and read it with `get_result`.")


@dataclass
class Call:
    deps: Deps
    caller: Caller
    request_id: str | None = None


@dataclass
class Outcome:
    """A result, or (a tool run with a progress token) a stream of notifications then the result."""

    value: Any = None
    stream: AsyncIterator[dict[str, Any]] | None = None
    audit: tuple[str, str, dict[str, Any]] | None = None  # (agent, tool, details) of a tools/call


def _version() -> str:
    try:
        return metadata.version("agent-service")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _schema(typ: type, extra: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Struct's JSON schema as one object schema (MCP wants `type: object` at the top)."""
    doc = msgspec.json.schema(typ)
    defs = doc.get("$defs", {})
    top = dict(defs.pop(typ.__name__))
    top.pop("title", None)
    if extra:
        top["properties"] = {**extra, **top["properties"]}
        top["required"] = [*required, *top.get("required", [])]
    if defs:
        top["$defs"] = defs
    return top


class GetResult(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task_id: str
    wait_seconds: float = 0.0


def initialize(params: dict[str, Any]) -> dict[str, Any]:
    asked = params.get("protocolVersion")
    return {"protocolVersion": asked if asked in VERSIONS else VERSIONS[0],
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "agent-service", "version": _version()}, "instructions": INSTRUCTIONS}


def list_tools(deps: Deps) -> dict[str, Any]:
    available = [a for a in agents.list_agents(deps).agents if a.available]
    names = [a.id for a in available]
    tools = [{"name": a.id, "title": a.id, "description": a.description, "inputSchema": _schema(InvokeRequest)}
             for a in available if a.id not in (SUBMIT, GET_RESULT)]
    tools.append({"name": SUBMIT, "title": "Submit a long call",
                  "description": "Queue a call to an agent as a background task and answer at once with its "
                  "`task_id`; read it with `get_result`. For calls that may outlast your request timeout.",
                  "inputSchema": _schema(InvokeAsyncRequest, {"agent": {"type": "string", "enum": names}},
                                         ("agent",))})
    tools.append({"name": GET_RESULT, "title": "Get a submitted call's result",
                  "description": "A submitted task's state and, once it has finished, its answer. "
                  f"`wait_seconds` (at most {MAX_WAIT:g}) waits for the end first.",
                  "inputSchema": {"type": "object", "required": ["task_id"], "additionalProperties": False,
                                  "properties": {"task_id": {"type": "string", "maxLength": 64},
                                                 "wait_seconds": {"type": "number", "minimum": 0,
                                                                  "maximum": MAX_WAIT}}}})
    return {"tools": tools}


def text_result(text: str, *, error: bool = False, structured: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": error}
    if structured is not None:
        out["structuredContent"] = structured
    return out


def _app_error_result(exc: AppError) -> dict[str, Any]:
    where = "; ".join(f"{e['path']}: {e['message']}" for e in exc.errors)
    return text_result(exc.detail + (f" ({where})" if where else ""), error=True,
                       structured={"code": exc.code, "status": exc.status, "errors": exc.errors})


def _need(caller: Caller, scope: str) -> None:
    if not caller.has_scope(scope):
        raise RpcError(SERVER_ERROR, f"This tool needs the `{scope}` scope.", reason="insufficient_scope", status=403)


def _arguments(args: Any, typ: type[Any]) -> Any:
    try:
        return msgspec.convert(args, typ)
    except msgspec.ValidationError as exc:
        errors = field_errors(args if isinstance(args, dict) else {}, typ) or [{"path": "$", "message": str(exc)}]
        raise AppError("The arguments are invalid.", errors=errors, code="validation_error") from None


async def call_tool(call: Call, params: dict[str, Any], progress_token: Any) -> Outcome:
    name, args = params.get("name"), params.get("arguments") or {}
    if not isinstance(name, str) or not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, "`name` must be a string and `arguments` an object.", reason="validation_error")
    if name == GET_RESULT:
        _need(call.caller, "tasks:read")
        return Outcome(value=await _guard(get_result(call, args)))
    _need(call.caller, "agents:invoke")
    if name == SUBMIT:
        agent = args.get("agent")
        outcome = Outcome(value=await _guard(submit(call, args)), audit=(str(agent)[:64], name, {}))
        if not outcome.value["isError"]:
            outcome.audit = (str(agent)[:64], name, {"task_id": outcome.value["structuredContent"]["task_id"]})
        return outcome
    if agents.registry(call.deps).get(name) is None:
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name[:64]}", reason="tool_not_found")
    audit: tuple[str, str, dict[str, Any]] = (name, name, {})
    try:
        req = _arguments(args, InvokeRequest)
        if req.session_id is not None and not call.caller.has_scope("sessions"):
            raise RpcError(SERVER_ERROR, "`session_id` needs the `sessions` scope.", reason="insufficient_scope",
                           status=403)
        if progress_token is None:
            answer = await agents.invoke(call.deps, name, req, owner_id=call.caller.user_id)
            return Outcome(value=text_result(answer.response), audit=audit)
        events = await agents.open_stream(call.deps, name, req, owner_id=call.caller.user_id)
    except AppError as exc:
        return Outcome(value=_app_error_result(exc), audit=audit)
    return Outcome(stream=_progress(events, progress_token), audit=audit)


async def _guard(coro: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await coro
    except AppError as exc:
        return _app_error_result(exc)
    return result


async def _progress(events: AsyncIterator[Any], token: Any) -> AsyncIterator[dict[str, Any]]:
    """A progress notification per chunk (`progress` = chunks so far, `message` = the chunk), then
    the tool's result (the whole answer; an error mid-stream is an error result)."""
    parts: list[str] = []
    async for event in events:
        if isinstance(event, StreamChunk):
            parts.append(event.content)
            yield {"method": "notifications/progress",
                   "params": {"progressToken": token, "progress": len(parts), "message": event.content}}
        elif isinstance(event, StreamDone):
            yield {"result": text_result("".join(parts))}
            return
        elif isinstance(event, StreamError):
            yield {"result": text_result(event.detail, error=True,
                                         structured={"code": event.code, "status": event.status})}
            return


async def submit(call: Call, args: dict[str, Any]) -> dict[str, Any]:
    agent = args.get("agent")
    if not isinstance(agent, str):
        raise AppError("`agent` names the agent to call.", code="validation_error",
                       errors=[{"path": "$.agent", "message": "Expected a string"}])
    req = _arguments({k: v for k, v in args.items() if k != "agent"}, InvokeAsyncRequest)
    if req.session_id is not None and not call.caller.has_scope("sessions"):
        raise AppError("`session_id` needs the `sessions` scope.", code="insufficient_scope")
    accepted, _ = await tasks.enqueue(call.deps, agent, req, owner_id=call.caller.user_id, request_id=call.request_id,
                                      tier=call.caller.tier, is_admin=call.caller.is_admin)
    return text_result(f"Submitted as task {accepted.task_id}; call get_result with this task_id.",
                       structured=msgspec.to_builtins(accepted))


async def get_result(call: Call, args: dict[str, Any]) -> dict[str, Any]:
    p = _arguments(args, GetResult)
    owner, admin = call.caller.user_id, call.caller.is_admin
    await tasks.get_record(call.deps, p.task_id, owner_id=owner, is_admin=admin)  # someone else's: not found
    await waiting.until_end(call.deps, p.task_id, owner_id=owner, is_admin=admin,
                            seconds=min(max(p.wait_seconds, 0.0), MAX_WAIT))
    status = await tasks.get_status(call.deps, p.task_id, owner_id=owner, is_admin=admin)
    data = msgspec.to_builtins(status)
    if status.state == "SUCCESS" and isinstance(status.result, JobResult):
        return text_result(status.result.content, structured=data)
    if status.state in FINISHED_STATES:
        return text_result(f"Task {status.task_id} ended {status.state}: {status.error or 'no answer'}",
                           error=status.state != "SUCCESS", structured=data)
    return text_result(f"Task {status.task_id} is {status.state} ({status.progress}%); call get_result again.",
                       structured=data)


async def dispatch(call: Call, method: str, params: dict[str, Any]) -> Outcome:
    if method == "initialize":
        return Outcome(value=initialize(params))
    if method == "ping":
        return Outcome(value={})
    if method == "tools/list":
        return Outcome(value=list_tools(call.deps))
    if method == "tools/call":
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        return await call_tool(call, params, token if isinstance(token, str | int) else None)
    raise RpcError(METHOD_NOT_FOUND, "Method not found", reason="method_not_found")
