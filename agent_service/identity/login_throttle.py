"""Per-account sign-in throttle, independent of the client address.

The per-IP login limit stops one address; an attacker with many addresses (or one who forges
them) is stopped here instead. After LOGIN_FAILURES_BEFORE_DELAY failed sign-ins of one email,
each further try must wait 1, 2, 4 … s after the previous failure, never more than
LOGIN_FAILURE_DELAY_MAX: guessing slows to one try per that delay, while the real user is held
back at most that long after the last bad try (no lockout). A success clears the count.

Redis away: the throttle fails open (logged); the per-IP limit still stands.
"""

from __future__ import annotations

import hashlib
import math

from redis.exceptions import RedisError

from agent_service.errors import TooManyRequests
from agent_service.kit.deps import Deps
from agent_service.logging import get_logger

log = get_logger(__name__)


def _key(deps: Deps, email: str) -> str:
    # hashed: the key space must not be a list of the users' emails
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"{deps.prefix}auth:login-failures:{digest}"


def delay_after(failures: int, *, free: int, cap: float) -> float:
    """Seconds a try must wait after the last failure, having seen `failures` of them."""
    if failures < free:
        return 0.0
    return float(min(cap, 2 ** min(failures - free, 30)))


async def check(deps: Deps, email: str) -> None:
    """Raise 429 `login_throttled` if this account's next try comes too soon."""
    s = deps.settings
    try:
        count, last = await deps.redis.hmget(_key(deps, email), ["n", "t"])  # type: ignore[misc]
    except (RedisError, OSError):
        log.warning("login_throttle.unavailable", failing="open")
        return
    if count is None or last is None:
        return
    wait = delay_after(int(count), free=s.login_failures_before_delay, cap=s.login_failure_delay_max)
    remaining = float(last) + wait - deps.clock().timestamp()
    if remaining > 0:
        retry = str(max(1, math.ceil(remaining)))
        raise TooManyRequests(f"Too many failed sign-ins for this account; try again in {retry} s.",
                              code="login_throttled", headers={"Retry-After": retry})


async def failed(deps: Deps, email: str) -> None:
    key = _key(deps, email)
    try:
        pipe = deps.redis.pipeline(transaction=True)
        pipe.hincrby(key, "n", 1)
        pipe.hset(key, "t", repr(deps.clock().timestamp()))
        # the count is forgotten once an account has been left alone for a while
        pipe.expire(key, int(max(900, deps.settings.login_failure_delay_max * 4)))
        await pipe.execute()
    except (RedisError, OSError):
        log.warning("login_throttle.unavailable", failing="open")


async def succeeded(deps: Deps, email: str) -> None:
    try:
        await deps.redis.delete(_key(deps, email))
    except (RedisError, OSError):
        log.warning("login_throttle.unavailable", failing="open")
