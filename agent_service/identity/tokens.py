"""Access tokens: HS256 JWTs we issue, optional RS256/ES256 tokens from an external OIDC issuer,
and the Redis blacklist of revoked `jti`s (entries expire with the token)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_service.config import Settings
from agent_service.errors import ConfigError, ServiceUnavailable, Unauthorized
from agent_service.kit.deps import Deps

MAX_TOKEN_LENGTH = 4096
KNOWN_DEFAULT_SECRETS = frozenset({
    "secret", "changeme", "change-me", "your-secret-key", "your-secret-key-here", "supersecret", "jwt-secret",
    "dev", "development", "test", "password", "please-change-me", "your-256-bit-secret",
})


def revoked_prefix(key_prefix: str) -> str:
    """Where revoked `jti`s live in Redis (the blacklist cleanup scans this)."""
    return f"{key_prefix}auth:revoked:"


def resolve_secret(settings: Settings) -> str:
    """The HS256 key. Outside development an unset, short or well-known secret stops the start."""
    secret = settings.jwt_secret
    if secret:
        # in every environment: a weak secret set in a test or staging box leaks into production
        if len(secret) < 32 or secret.lower() in KNOWN_DEFAULT_SECRETS:
            raise ConfigError("JWT_SECRET is a known default or shorter than 32 characters")
        return secret
    if not settings.is_dev:
        raise ConfigError("JWT_SECRET must be set outside development (APP_ENV=production)")
    # development: one random secret per var dir, shared by the web and worker processes
    path = Path(settings.var_dir) / "jwt_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def issue_access_token(settings: Settings, secret: str, *, user_id: str, roles: tuple[str, ...],
                       scopes: tuple[str, ...], now: datetime) -> tuple[str, int]:
    iat = int(now.timestamp())
    exp = iat + settings.access_token_ttl
    claims = {
        "sub": user_id, "iat": iat, "nbf": iat, "exp": exp, "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "roles": list(roles),
        "scope": " ".join(scopes), "typ": "access",
    }
    return jwt.encode(claims, secret, algorithm="HS256"), exp


def issue_stream_token(settings: Settings, secret: str, *, user_id: str, task_id: str,
                       now: datetime) -> tuple[str, int]:
    """A token that can only open one task's event stream, within STREAM_TOKEN_TTL: for
    EventSource, which cannot send headers, so the secret in its URL must be worthless soon."""
    iat = int(now.timestamp())
    exp = iat + settings.stream_token_ttl
    claims = {"sub": user_id, "task": task_id, "iat": iat, "nbf": iat, "exp": exp, "jti": uuid.uuid4().hex,
              "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "typ": "stream"}
    return jwt.encode(claims, secret, algorithm="HS256"), exp


def verify_stream_token(settings: Settings, secret: str, token: str, *, task_id: str, now: datetime) -> str:
    """The user id a stream token speaks for, if it is valid for this task at `now` (the app's
    clock, as for bearer tokens)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("The stream token is invalid.", code="invalid_stream_token")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=settings.jwt_audience,
                            issuer=settings.jwt_issuer, options={"require": ["exp", "sub", "task", "typ"],
                                                                 "verify_exp": False, "verify_nbf": False})
    except jwt.PyJWTError:
        raise Unauthorized("The stream token is invalid.", code="invalid_stream_token") from None
    if claims.get("typ") != "stream" or claims.get("task") != task_id or not isinstance(claims["exp"], int):
        raise Unauthorized("The stream token is not valid for this task.", code="invalid_stream_token")
    if claims["exp"] <= now.timestamp():
        raise Unauthorized("The stream token has expired; ask for a new one.", code="stream_token_expired")
    return str(claims["sub"])


def revocation_id(token: str, claims: dict[str, Any]) -> str:
    """What sign-out revokes: the token's `jti`, or for an external token without one (OIDC
    providers need not send it) a hash of the token itself, so its logout still takes."""
    jti = claims.get("jti")
    if isinstance(jti, str) and jti and len(jti) <= 128:
        return jti
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class TokenVerifier:
    def __init__(self, settings: Settings, secret: str, redis: Redis) -> None:
        self._revoked = revoked_prefix(settings.redis_key_prefix)
        self._settings = settings
        self._secret = secret
        self._redis = redis
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=600) \
            if settings.jwt_jwks_url else None

    async def verify(self, token: str, *, now: datetime) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("The bearer token is too long.", code="invalid_token")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is malformed.", code="invalid_token") from None
        if alg == "HS256":
            key: Any = self._secret
            issuer, audience = self._settings.jwt_issuer, self._settings.jwt_audience
            required = ["exp", "iat", "nbf", "sub", "jti"]
        elif alg in ("RS256", "ES256") and self._jwks is not None:
            key = await self._external_key(token)
            issuer = self._settings.jwt_external_issuer or ""
            audience = self._settings.jwt_external_audience or ""
            required = ["exp", "sub"]
        else:
            raise Unauthorized("The bearer token uses an unsupported algorithm.", code="invalid_token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=issuer,
                options={"require": required}, leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The bearer token has expired.", code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The bearer token is not valid yet.", code="invalid_token") from None
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token is invalid.", code="invalid_token") from None
        if alg == "HS256" and claims.get("typ") != "access":
            raise Unauthorized("The bearer token is not an access token.", code="invalid_token")
        claims["jti"] = revocation_id(token, claims)
        if await self.is_revoked(claims["jti"]):
            raise Unauthorized("The bearer token has been revoked.", code="token_revoked")
        return claims

    async def _external_key(self, token: str) -> Any:
        assert self._jwks is not None
        try:
            signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError:
            raise ServiceUnavailable("The identity provider's keys cannot be fetched.") from None
        except jwt.PyJWTError:
            raise Unauthorized("The bearer token's signing key is unknown.", code="invalid_token") from None
        return signing_key.key

    async def is_revoked(self, jti: str) -> bool:
        try:
            return bool(await self._redis.exists(self._revoked + jti))
        except (RedisError, OSError) as exc:  # fail closed, never open
            raise ServiceUnavailable("Token revocation cannot be checked right now.") from exc

    async def revoke(self, jti: str, exp: int) -> None:
        await self._redis.set(self._revoked + jti, str(exp), exat=exp)


class AuthKit:
    """The process's signing secret and verifier (a Deps part: `deps.part(AuthKit.of)`)."""

    def __init__(self, secret: str, verifier: TokenVerifier) -> None:
        self.secret = secret
        self.verifier = verifier

    @classmethod
    def of(cls, deps: Deps) -> AuthKit:
        secret = resolve_secret(deps.settings)
        return cls(secret, TokenVerifier(deps.settings, secret, deps.redis))
