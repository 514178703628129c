"""Job rate limits shared by every worker: a global "all jobs" bucket plus one bucket per job function.

`acquire` runs before a job does its work. It returns None when the job may run, else the number
of seconds to defer it; the worker re-queues the job for then without counting a try.

Both buckets are checked in ONE atomic script call (`RateLimiter.hit_all`): they are charged
together or not at all. So a job refused by its own function's bucket never uses up a token of
the global bucket (nor the reverse), and there is no window in which a token is taken and then
refunded. The delay is the binding bucket's: the longest wait among the buckets that refused.

Limits are "requests per `period`" (default: per minute), keyed by function name, with
`ALL_JOBS` ("*") for the global bucket; a function without its own entry is only checked
against the global bucket.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent_service.config import Settings
from agent_service.jobs import names
from agent_service.jobs.ratelimit import Check, RateLimiter, RateLimiterUnavailable
from agent_service.logging import get_logger

ALL_JOBS = "*"
GLOBAL_KEY = "jobs:all"  # Redis bucket of ALL_JOBS (per-function buckets are `job:<function>`)
MIN_DEFER = 0.01  # seconds: never ask for a zero/µs deferral (no hot re-queue loop)

DEFAULT_JOB_LIMITS: Mapping[str, int] = {
    ALL_JOBS: 1000,
    names.INVOKE_AGENT: 100,
    names.INVOKE_AGENT_STREAMING: 50,
}


def job_limits_from_settings(settings: Settings) -> dict[str, int]:
    """The limits dict from JOB_RATE_LIMIT_ALL / _INVOKE / _STREAM (per minute)."""
    return {
        ALL_JOBS: settings.job_rate_limit_all,
        names.INVOKE_AGENT: settings.job_rate_limit_invoke,
        names.INVOKE_AGENT_STREAMING: settings.job_rate_limit_stream,
    }


def bucket_key(function_name: str) -> str:
    return GLOBAL_KEY if function_name == ALL_JOBS else f"job:{function_name}"


async def acquire(
    limiter: RateLimiter,
    function_name: str,
    limits: Mapping[str, int] = DEFAULT_JOB_LIMITS,
    *,
    period: float = 60.0,
    fail_open: bool = True,
    now: float | None = None,
) -> float | None:
    """None: run the job now (a token was taken from each of its buckets). A float: defer the job
    by that many seconds (nothing was charged).

    Redis down: with `fail_open` (the default: a worker that cannot reach Redis cannot take new
    jobs anyway, and a job already taken should not be lost) the job runs and a warning is
    logged; otherwise `RateLimiterUnavailable` propagates. `now` is for tests only.
    """
    if function_name == ALL_JOBS:
        raise ValueError(f"{ALL_JOBS!r} names the global bucket, not a job function")
    checks = [Check(bucket_key(name), limits[name], period)
              for name in (function_name, ALL_JOBS) if name in limits]
    if not checks:
        return None
    try:
        decision = await limiter.hit_all(checks, now=now)
    except RateLimiterUnavailable:
        mode = "open" if fail_open else "closed"
        get_logger(__name__).warning(f"rate limiter unavailable, failing {mode}", job=function_name, failing=mode)
        if fail_open:
            return None
        raise
    if decision.allowed:
        return None
    return max(decision.retry_after, MIN_DEFER)
