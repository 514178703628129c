"""API rate limits: per principal and tier (tighter on stream routes), per client IP for login.

Every limited response carries RateLimit-* and X-RateLimit-* headers; over the limit is a 429
with Retry-After. If Redis is down the limiter fails open for reads (GET) and closed for
everything else, and logs which.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Scope

from agent_service.config import Settings
from agent_service.errors import ServiceUnavailable, TooManyRequests
from agent_service.kit.client_ip import client_ip
from agent_service.kit.deps import Deps
from agent_service.kit.endpoint import Caller, Limits
from agent_service.kit.ratelimit import Limit, Quota, headers
from agent_service.logging import get_logger

log = get_logger(__name__)


def _ip(scope: Scope) -> str:
    app = scope.get("app")
    return client_ip(scope, getattr(getattr(app, "state", None), "trusted_proxies", [])) or "unknown"


async def unauthenticated(scope: Scope) -> None:
    """Charge a request with missing or bad credentials to its client IP; raise 429 beyond
    RATE_LIMIT_UNAUTHENTICATED_PER_IP a minute (guessing keys and tokens is slowed, and a flood of
    failures stops before each one costs an audit row). Redis away: no limit (the 401 stands)."""
    app = scope.get("app")
    deps: Deps | None = getattr(getattr(app, "state", None), "deps", None)
    if deps is None or deps.limiter is None or not deps.settings.rate_limit_enabled:
        return
    limit = Limit(deps.settings.rate_limit_unauthenticated_per_ip)
    try:
        decision = await deps.limiter.hit([(f"unauth:ip:{_ip(scope)}", limit)])
    except ServiceUnavailable:
        return
    if not decision.allowed:
        hdrs = headers(decision)
        if deps.metrics is not None:
            await deps.metrics.rate_limited("unauthenticated:ip")
        raise TooManyRequests(f"Too many requests with missing or invalid credentials from this address; retry in "
                              f"{hdrs['Retry-After']} s.", code="too_many_auth_failures", headers=hdrs)


def _quota(deps: Deps) -> Quota:
    """The process's leases of the API buckets (the same buckets, and keys, as `deps.limiter`'s)."""
    return Quota(deps.redis, prefix=f"{deps.settings.redis_key_prefix}rl:")


def _limit_for(settings: Settings, kind: str, tier: str) -> Limit:
    if kind == "login":
        return Limit(settings.rate_limit_login_per_ip)
    field = f"rate_limit_{'stream_' if kind == 'stream' else ''}{tier}"
    return Limit(getattr(settings, field, settings.rate_limit_free))


async def check(request: Request, limits: Limits, principal: Caller | None) -> dict[str, str]:
    """The rate-limit headers for this request; raises 429 when over the limit (the route layer's
    LimitCheck)."""
    deps: Deps = request.app.state.deps
    kind, local_fallback = limits.kind, limits.local_fallback
    settings = deps.settings
    if not settings.rate_limit_enabled or deps.limiter is None:
        return {}
    if kind == "login" or principal is None:
        who = "ip:" + _ip(request.scope)
        tier = "ip"
    else:
        # charged to the user, whichever of their keys or tokens is used: minting more keys must not
        # multiply the quota
        who = f"user:{principal.user_id}"
        tier = principal.tier
    limit = _limit_for(settings, kind, tier)
    fail_open = request.method in ("GET", "HEAD")
    key = f"{kind}:{who}"
    try:
        decision = await deps.part(_quota).take(key, limit)
    except ServiceUnavailable:
        mode = "open" if fail_open else ("local" if local_fallback else "closed")
        log.warning("ratelimit.unavailable", failing=mode, path=request.url.path)
        if fail_open:
            return {}
        if not local_fallback:
            raise ServiceUnavailable("Rate limiting is unavailable right now; try again shortly.",
                                     code="rate_limiter_unavailable", headers={"Retry-After": "5"}) from None
        decision = request.app.state.local_limiter.hit(key, limit)
    hdrs = headers(decision)
    if not decision.allowed:
        log.info("ratelimit.rejected", kind=kind, tier=tier, path=request.url.path)
        if deps.metrics is not None:
            await deps.metrics.rate_limited(f"{kind}:{tier}")  # api:free, stream:pro, login:ip
        raise TooManyRequests(
            f"Rate limit of {limit.limit} requests per minute exceeded; retry in {hdrs['Retry-After']} s.",
            headers=hdrs,
        )
    return hdrs


async def charge(request: Request, principal: Caller, cost: int) -> None:
    """Charge `cost` more requests to the caller's API budget (a batch of N items counts as the N
    calls it stands for; the route layer charged one already). Over the limit: 429 and nothing
    charged. Redis away: 503 (a write is never let through unlimited)."""
    deps: Deps = request.app.state.deps
    settings = deps.settings
    if cost <= 0 or not settings.rate_limit_enabled or deps.limiter is None:
        return
    limit = _limit_for(settings, "api", principal.tier)
    if cost + 1 > limit.limit:  # never allowed, however long the caller waits
        raise TooManyRequests(f"This request counts as {cost + 1} requests, more than your limit of {limit.limit} a "
                              "minute allows at once; split it.", code="over_rate_limit")
    decision = await deps.limiter.hit([(f"api:user:{principal.user_id}", limit)], cost=cost)
    if not decision.allowed:
        hdrs = headers(decision)
        if deps.metrics is not None:
            await deps.metrics.rate_limited(f"api:{principal.tier}")
        raise TooManyRequests(f"Rate limit of {limit.limit} requests per minute exceeded (this request counts as "
                              f"{cost + 1}); retry in {hdrs['Retry-After']} s.", headers=hdrs)
