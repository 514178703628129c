"""The HTTP side of the seam: what each operation sends (a `Call`) and how an answer (a `Reply`)
becomes a typed value or a typed error. No I/O here: the sync and async wires send the calls, and
the public clients speak only in operations, so another protocol under them changes this module
and the wires, not the clients' API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from agent_service.client._errors import ApiError, api_error
from agent_service.client._models import (
    AgentList,
    InvokeResult,
    TaskAccepted,
    TaskPage,
    TaskStatus,
    TokenPair,
)

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 60.0  # seconds; a stream's reads too (task events send a keep-alive every 5 s)
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # under API_PREFIX
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # safe to send again: a GET, or a POST the server deduplicates by its Idempotency-Key
    idempotent: bool = False
    authenticated: bool = True


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx.Headers)
    content: bytes


@dataclass(frozen=True)
class RetryPolicy:
    """Idempotent calls only: a 429/503 (or a 409 `idempotency_in_progress`) that says when to come
    back, if that is within `max_wait`; a broken connection, after a short backoff."""

    retries: int = 2
    max_wait: float = 30.0
    backoff: float = 0.5

    def delay(self, call: Call, attempt: int, reply: Reply | None) -> float | None:
        if not call.idempotent or attempt >= self.retries:
            return None
        if reply is None:  # the connection failed: the request may or may not have been served
            return min(self.max_wait, self.backoff * 2.0**attempt)
        if reply.status not in (409, 429, 503):
            return None
        wait = api_error(reply.status, reply.headers, reply.content).retry_after
        return wait if wait is not None and wait <= self.max_wait else None


def base_url(url: str) -> str:
    """The server's root: a trailing slash or /api/v1 is accepted and dropped."""
    return url.rstrip("/").removesuffix(API_PREFIX)


def credentials(api_key: str | None, token: str | None) -> dict[str, str]:
    if api_key and token:
        raise ValueError("Pass api_key or token, not both: the server refuses a request carrying both.")
    if api_key:
        return {"X-API-Key": api_key}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def decode(reply: Reply, kind: type[T]) -> T:
    if reply.status >= 400:
        raise api_error(reply.status, reply.headers, reply.content)
    try:
        return msgspec.json.decode(reply.content, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError: a shape we cannot read
        raise ApiError(reply.status, "unreadable_response", f"The answer did not decode: {exc}",
                       request_id=reply.headers.get("x-request-id")) from exc


def _agent_path(agent: str | None, action: str) -> str:
    return f"/agents/{quote(agent, safe='')}/{action}" if agent else f"/agents/{action}"


def _task_path(task_id: str, suffix: str = "") -> str:
    return f"/agents/tasks/{quote(task_id, safe='')}{suffix}"


def _body(message: str, session_id: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message}
    if session_id is not None:
        body["session_id"] = session_id
    if metadata is not None:
        body["metadata"] = metadata
    return body


def token(email: str, password: str) -> tuple[Call, type[TokenPair]]:
    return Call("POST", "/auth/token", {"email": email, "password": password}, authenticated=False), TokenPair


def agents() -> tuple[Call, type[AgentList]]:
    return Call("GET", "/agents", idempotent=True), AgentList


def invoke(message: str, agent: str | None, session_id: str | None,
           metadata: dict[str, Any] | None) -> tuple[Call, type[InvokeResult]]:
    return Call("POST", _agent_path(agent, "invoke"), _body(message, session_id, metadata)), InvokeResult


def stream(message: str, agent: str | None, session_id: str | None, metadata: dict[str, Any] | None) -> Call:
    return Call("POST", _agent_path(agent, "stream"), _body(message, session_id, metadata),
                headers={"Accept": "text/event-stream"})


def submit(message: str, *, agent: str | None, session_id: str | None, metadata: dict[str, Any] | None,
           stream: bool, priority: str, run_at: datetime | None, delay_seconds: float | None,
           idempotency_key: str | None) -> tuple[Call, type[TaskAccepted]]:
    body = _body(message, session_id, metadata)
    body["stream"] = stream
    body["priority"] = priority
    if run_at is not None:
        body["run_at"] = run_at
    if delay_seconds is not None:
        body["delay_seconds"] = delay_seconds
    # a key of our own when none is given, so that a retried submit is answered, not queued twice
    key = idempotency_key or f"client-{uuid.uuid4()}"
    return Call("POST", _agent_path(agent, "invoke-async"), body, headers={"Idempotency-Key": key},
                idempotent=True), TaskAccepted


def task(task_id: str) -> tuple[Call, type[TaskStatus]]:
    return Call("GET", _task_path(task_id), idempotent=True), TaskStatus


def cancel(task_id: str) -> tuple[Call, type[TaskStatus]]:
    # cancelling twice is harmless until the task ends, after which a repeat is a 409: not retried
    return Call("POST", _task_path(task_id, "/cancel")), TaskStatus


def tasks(state: str | None, agent: str | None, limit: int, cursor: str | None) -> tuple[Call, type[TaskPage]]:
    params = {"limit": str(limit)}
    for name, value in (("state", state), ("agent", agent), ("cursor", cursor)):
        if value is not None:
            params[name] = value
    return Call("GET", "/agents/tasks", params=params, idempotent=True), TaskPage


def events(task_id: str, last_event_id: str | None) -> Call:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return Call("GET", _task_path(task_id, "/events"), headers=headers, idempotent=True)
