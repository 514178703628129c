"""Application errors. Raised by services and below, rendered as problem+json by the API."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error a client may see: status, stable code, a human title and a safe detail."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []
        self.headers = headers or {}
        if code is not None:
            self.code = code


class BadRequest(AppError):
    status, code, title = 400, "bad_request", "Bad Request"


class MalformedJSON(BadRequest):
    code, title = "malformed_json", "Malformed JSON"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not Found"


class MethodNotAllowed(AppError):
    status, code, title = 405, "method_not_allowed", "Method Not Allowed"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload Too Large"


class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported Media Type"


class ValidationFailed(AppError):
    status, code, title = 422, "validation_error", "Validation Error"


class TooManyRequests(AppError):
    status, code, title = 429, "rate_limited", "Too Many Requests"


class AgentFailed(AppError):
    """The agent (or the provider behind it) failed: not the client's fault, not ours."""

    status, code, title = 502, "agent_error", "Agent Error"


class ServiceUnavailable(AppError):
    status, code, title = 503, "service_unavailable", "Service Unavailable"


class GatewayTimeout(AppError):
    status, code, title = 504, "timeout", "Gateway Timeout"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""
