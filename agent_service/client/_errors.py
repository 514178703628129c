"""The client's exceptions: API errors decoded from problem+json (RFC 9457), the typed outcomes of
a task that did not succeed, and a transport failure that httpx users need not import httpx for."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from agent_service.client._models import AgentResult, TaskStatus


class AgentServiceError(Exception):
    """Base of everything this client raises on purpose."""


class ConnectionFailed(AgentServiceError):
    """The server could not be reached or the connection broke (the httpx error is the cause)."""


class FieldError(msgspec.Struct, kw_only=True):
    path: str
    message: str


class _Problem(msgspec.Struct, kw_only=True):
    # every field optional: a proxy's error page or an older server must still decode
    type: str | None = None
    title: str | None = None
    status: int | None = None
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    code: str | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)


_problem = msgspec.json.Decoder(_Problem)


class ApiError(AgentServiceError):
    """An error answer of the API. `code` is the stable machine-readable reason (`not_found`,
    `too_many_streams`, …), `errors` name the JSON path of each bad field, `retry_after` is the
    server's Retry-After in seconds when it sent one."""

    retry_after: float | None

    def __init__(self, status: int, code: str, detail: str, *, request_id: str | None = None,
                 errors: list[FieldError] | None = None, title: str | None = None,
                 retry_after: float | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.errors = errors or []
        self.title = title
        self.retry_after = retry_after
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    """400: malformed JSON, a bad header, both credentials sent."""


class Unauthorized(ApiError):
    """401: no credential, or a bad, expired or revoked one."""


class Forbidden(ApiError):
    """403: the credential lacks a scope (someone else's resource is a 404, not this)."""


class NotFound(ApiError):
    """404: no such resource, or it belongs to someone else."""


class Conflict(ApiError):
    """409: a finished task cannot be cancelled, an Idempotency-Key reused with another body, …"""


class ValidationError(ApiError):
    """422: the body or query does not match the schema; `errors` say where."""


class RateLimited(ApiError):
    """429: over a rate limit or the open-streams bound; retry after `retry_after` seconds."""


class ServerError(ApiError):
    """5xx."""


class AgentFailed(ServerError):
    """502: the agent (or its provider) failed permanently."""


class ServiceUnavailable(ServerError):
    """503: a dependency is down or the agent is unconfigured; retry after `retry_after` seconds."""


class GatewayTimeout(ServerError):
    """504: a synchronous invocation took longer than the server allows."""


class StreamFailed(ApiError):
    """An `error` event: the stream failed after its 200 was sent."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: ValidationError,
    429: RateLimited, 502: AgentFailed, 503: ServiceUnavailable, 504: GatewayTimeout,
}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def api_error(status: int, headers: Mapping[str, str], content: bytes) -> ApiError:
    """The typed error of an error answer; anything that is not problem+json still gives one."""
    try:
        problem = _problem.decode(content) if content else _Problem()
    except msgspec.DecodeError:
        problem = _Problem()
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(
        status, problem.code or f"http_{status}", problem.detail or problem.title or f"HTTP {status}",
        request_id=problem.request_id or headers.get("x-request-id"), errors=problem.errors,
        title=problem.title, retry_after=retry_after(headers), headers=headers,
    )


def stream_error(data: Any) -> StreamFailed:
    """The error of an `error` event's data ({code, detail, status})."""
    fields = data if isinstance(data, dict) else {}
    status = fields.get("status")
    return StreamFailed(status if isinstance(status, int) else 500, str(fields.get("code") or "stream_error"),
                        str(fields.get("detail") or "The stream failed."))


class TaskError(AgentServiceError):
    """A task did not give a result. `status` is its last known status (None if never read)."""

    def __init__(self, task_id: str, message: str, status: TaskStatus | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status

    @property
    def state(self) -> str | None:
        return self.status.state if self.status else None

    @property
    def error(self) -> str | None:
        return self.status.error if self.status else None

    @property
    def error_code(self) -> str | None:
        return self.status.error_code if self.status else None


class TaskFailed(TaskError):
    """The task ended FAILURE; `error` says why and `error_code` (`worker_lost`, `job_lost`, …)
    is its stable reason when the server gave one."""


class TaskCancelled(TaskError):
    """The task ended REVOKED; a streaming task's partial output is `partial`."""

    @property
    def partial(self) -> AgentResult | None:
        return self.status.agent_result() if self.status else None


class ResultExpired(TaskError):
    """The task succeeded but its result is gone (kept JOB_RESULT_TTL seconds on the server)."""


class TaskTimeout(TaskError, TimeoutError):
    """`wait(timeout)` ran out before the task ended; the task goes on (cancel it if need be)."""
