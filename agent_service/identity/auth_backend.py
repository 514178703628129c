"""The Starlette AuthenticationBackend: a bearer token or an X-API-Key, never both (400).

A credential that is present but invalid is a 401 (a 429 once the client IP has failed too
often); no credential at all leaves the request anonymous, and the route decides (kit/endpoint.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Sequence

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection
from starlette.types import Scope

from agent_service.errors import AppError, BadRequest, Unauthorized
from agent_service.identity.schemas import Principal

Resolver = Callable[[str], Awaitable[Principal]]
StreamResolver = Callable[[str, str], Awaitable[Principal]]  # (token, task id) -> the caller
MAX_HEADER = 4096


class AuthUser(BaseUser):
    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal.email

    @property
    def identity(self) -> str:
        return self.principal.user_id

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin


class CredentialError(AuthenticationError):
    """Carries the AppError to render (Starlette's on_error receives this exception)."""

    def __init__(self, error: AppError) -> None:
        super().__init__(error.detail)
        self.error = error


class ApiAuthBackend(AuthenticationBackend):
    def __init__(self, bearer: Resolver, api_key: Resolver, *, public_paths: Sequence[re.Pattern[str]] = (),
                 on_failure: Callable[[Scope], Awaitable[None]] | None = None,
                 stream_token: StreamResolver | None = None, stream_path: re.Pattern[str] | None = None) -> None:
        self._bearer = bearer
        self._api_key = api_key
        # `?token=` is a credential on one route only (a task's events, for EventSource) and only
        # for the task it names: anywhere else a token in a URL is ignored, never honoured
        self._stream_token = stream_token
        self._stream_path = stream_path
        self._on_failure = on_failure  # charges the client IP; raises 429 past its limit
        # public routes ignore credentials: a stale or odd header never turns them into a 401
        # (the token endpoint reads credentials from its body, /metrics checks its own token);
        # the verdict per path is remembered (bounded, short paths only): most requests repeat a few
        self._public = tuple(public_paths)
        self._public_memo = functools.lru_cache(maxsize=4096)(self._matches_public)

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        path, root = conn.scope.get("path", ""), conn.scope.get("root_path", "")
        local = path[len(root):] if root and path.startswith(root) else path
        if self._public_memo(local) if len(local) <= 200 else self._matches_public(local):
            return None
        header = conn.headers.get("authorization")
        raw_key = conn.headers.get("x-api-key")
        try:
            if header is not None and raw_key is not None:
                # picking one silently would let a stale header decide who the caller is
                raise BadRequest("Send either `Authorization` or `X-API-Key`, not both.",
                                 code="conflicting_credentials")
            if header is None and raw_key is None and (found := self._stream_request(conn, local)) is not None:
                assert self._stream_token is not None
                principal = await self._stream_token(*found)
            elif header is not None:
                principal = await self._bearer(_bearer_token(header))
            elif raw_key is not None:
                if len(raw_key) > MAX_HEADER:
                    raise Unauthorized("The API key is invalid, expired or revoked.", code="invalid_api_key")
                principal = await self._api_key(raw_key.strip())
            else:
                return None
        except AppError as exc:
            if exc.status in (400, 401) and self._on_failure is not None:
                try:
                    await self._on_failure(conn.scope)
                except AppError as limited:
                    raise CredentialError(limited) from None
            raise CredentialError(exc) from None
        return AuthCredentials(list(principal.scopes)), AuthUser(principal)

    def _matches_public(self, local: str) -> bool:
        return any(p.match(local) for p in self._public)

    def _stream_request(self, conn: HTTPConnection, local: str) -> tuple[str, str] | None:
        return _stream_request_of(conn, local, self._stream_path) if self._stream_token else None


def _stream_request_of(conn: HTTPConnection, local: str, path: re.Pattern[str] | None) -> tuple[str, str] | None:
    if path is None or conn.scope.get("method") != "GET" or b"token=" not in conn.scope.get("query_string", b""):
        return None
    match = path.match(local)
    token = conn.query_params.get("token")
    return (token, match.group("task_id")) if match and token else None


def _bearer_token(header: str) -> str:
    if len(header) > MAX_HEADER:
        raise Unauthorized("The Authorization header is too long.", code="invalid_authorization")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("Use `Authorization: Bearer <token>` or the X-API-Key header.",
                           code="invalid_authorization")
    return token
