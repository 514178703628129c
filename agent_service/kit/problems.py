"""RFC 9457 problem+json for every error. Nothing from inside (exception text, traces) leaks out."""

from __future__ import annotations

from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from agent_service.errors import AppError
from agent_service.kit import route_table
from agent_service.kit.io import json_response
from agent_service.kit.schemas import FieldError, Problem

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:agent-service:problem:"


def problem(
    scope: Scope, status: int, code: str, title: str, detail: str,
    *, errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
) -> Response:
    body = Problem(
        type=TYPE_BASE + code, title=title, status=status, detail=detail, instance=scope.get("path"),
        request_id=scope.get("state", {}).get("request_id"), code=code,
        errors=[FieldError(path=e["path"], message=e["message"]) for e in errors or []],
    )
    return json_response(body, status=status, headers=headers, media_type=PROBLEM_JSON)


async def app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem(request.scope, exc.status, exc.code, exc.title, exc.detail, errors=exc.errors,
                   headers=exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = _HTTP_CODES.get(exc.status_code, phrase.lower().replace(" ", "_"))
    detail = {404: "No such resource.", 405: "Method not allowed on this resource."}.get(exc.status_code, phrase)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := route_table.methods_for(request.scope)):
        headers["Allow"] = ", ".join(sorted(allowed))
    return problem(request.scope, exc.status_code, code, phrase, detail, headers=headers)


def internal_error(scope: Scope) -> Response:
    return problem(scope, 500, "internal_error", "Internal Server Error",
                   "An unexpected error occurred. Quote the request id when reporting it.")


EXCEPTION_HANDLERS = {AppError: app_error, HTTPException: http_error}
