"""JSON-RPC 2.0 for the facades that speak it (A2A, MCP): one request object per POST (neither
protocol batches), its errors as error objects, never an HTTP 500.

A request is checked in the order the spec's error codes read: not JSON → -32700; not a request
object (or nested deeper than kit/io's cap) → -32600; then the method (-32601) and its params
(-32602) are the caller's to check. Our own errors (kit's AppError) become error objects too:
`from_app_error` keeps their code, status, field paths and Retry-After so each protocol can say
them in its own `data` shape.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from agent_service.errors import AppError
from agent_service.kit.io import MAX_DEPTH, field_errors, too_deep

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # the implementation-defined range's first code: our errors that no protocol code names

RequestId = str | int | None
T = TypeVar("T", bound=msgspec.Struct)
_json = msgspec.json.Encoder()


class RpcError(Exception):
    """An error object to answer with. `reason` is our stable code (`task_not_found`, …), `errors`
    the bad fields as kit/io lists them, `status` the HTTP status the REST API would have used."""

    def __init__(self, code: int, message: str, *, reason: str | None = None, status: int | None = None,
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
                 rid: RequestId = None, http_status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.rid = code, message, rid  # rid: the request's id once it is known
        # 200 for an error of the call; 4xx for a request that is no JSON-RPC call at all (see problem_body)
        self.http_status = http_status
        self.reason, self.status = reason, status
        self.errors = errors or []
        self.headers = headers or {}


class Request(msgspec.Struct, kw_only=True):
    method: str
    params: dict[str, Any]
    id: RequestId = None
    is_notification: bool = False  # no `id` member: nothing may be answered


def parse(raw: bytes) -> Request:
    if too_deep(raw):
        raise RpcError(INVALID_REQUEST, f"The request nests deeper than {MAX_DEPTH} levels.", reason="json_too_deep",
                       http_status=400)
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise RpcError(PARSE_ERROR, "Invalid JSON payload", reason="malformed_json", http_status=400) from None
    if not isinstance(obj, dict):
        raise RpcError(INVALID_REQUEST, "Expected one JSON-RPC request object (batches are not supported).",
                       reason="invalid_request", http_status=400)
    rid = obj.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int | None):
        raise RpcError(INVALID_REQUEST, "`id` must be a string, an integer or null.", reason="invalid_request",
                       http_status=400)
    if obj.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, '`jsonrpc` must be "2.0".', reason="invalid_request", rid=rid, http_status=400)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, "`method` must be a non-empty string.", reason="invalid_request", rid=rid,
                       http_status=400)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "`params` must be an object.", reason="invalid_params", rid=rid, http_status=400)
    return Request(method=method, params=params, id=rid, is_notification="id" not in obj)


def params_as(params: dict[str, Any], typ: type[T]) -> T:
    """The params as `typ`, or -32602 naming every bad field (paths as kit/io writes them)."""
    try:
        return msgspec.convert(params, typ)
    except msgspec.ValidationError as exc:
        errors = field_errors(params, typ) or [{"path": "$", "message": str(exc)}]
        # unknown fields are allowed here (forward compatibility), so they are not errors
        errors = [e for e in errors if e["message"] != "Unknown field"] or [{"path": "$", "message": str(exc)}]
        raise RpcError(INVALID_PARAMS, "Invalid parameters", reason="validation_error", errors=errors) from None


def from_app_error(exc: AppError, codes: dict[str, int]) -> RpcError:
    """Our error as an error object: `codes` maps our error codes to the protocol's; bad input is
    -32602; anything else the implementation-defined -32000 (its `reason` says which)."""
    code = codes.get(exc.code)
    if code is None:
        code = INVALID_PARAMS if exc.status in (400, 422) else SERVER_ERROR
    retry = {k: v for k, v in exc.headers.items() if k.lower() == "retry-after"}
    return RpcError(code, exc.detail, reason=exc.code, status=exc.status, errors=exc.errors, headers=retry)


def result(rid: RequestId, value: Any) -> bytes:
    return _json.encode({"jsonrpc": "2.0", "id": rid, "result": value})


def error(rid: RequestId, err: RpcError, data: Any = None) -> bytes:
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if data is not None:
        body["data"] = data
    return _json.encode({"jsonrpc": "2.0", "id": rid, "error": body})


def problem_body(err: RpcError, data: Any, *, instance: str | None, request_id: str | None) -> bytes:
    """A request that is no JSON-RPC call (not JSON, not a request object, too large, not JSON at
    all) is refused with a 4xx whose body is both the JSON-RPC error response and an RFC 9457
    problem, the API's error shape: JSON-RPC clients read `error`, HTTP tools the problem."""
    code = err.reason or "invalid_request"
    body: dict[str, Any] = {
        "type": f"urn:agent-service:problem:{code}", "title": "Invalid JSON-RPC request", "status": err.http_status,
        "detail": err.message, "instance": instance, "request_id": request_id, "code": code,
        "jsonrpc": "2.0", "id": err.rid, "error": {"code": err.code, "message": err.message},
    }
    if data is not None:
        body["error"]["data"] = data
    if err.errors:
        body["errors"] = err.errors
    return _json.encode(body)


def encode(value: Any) -> bytes:
    return _json.encode(value)
