"""Job policy: retry with exponential backoff and full jitter (capped, transient failures only), and
the job rate limits shared by all workers (over the limit a job is deferred, not failed)."""

from __future__ import annotations

import random
from collections.abc import Callable

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.ratelimit import Limit
from agent_service.logging import get_logger
from agent_service.tasks.schemas import AgentJob

log = get_logger("agent_service.tasks")


class RetryLater(Exception):
    """Raised by a job body to be run again after `delay` seconds (the worker maps it to arq's Retry)."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


def backoff_delay(
    retry_number: int, *, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter (AWS style): uniform in [0, min(cap, base * 2**(n-1))] for the n-th retry."""
    ceiling = min(cap, base * (2 ** max(0, retry_number - 1)))
    return float(ceiling * rng())


async def admit(deps: Deps, job: AgentJob, name: str) -> float | None:
    """Job rate limits shared by all workers: None to run now, else seconds to defer the job.

    A deferral is not a try: the caller re-queues the job and the attempt count ignores it.
    """
    s = deps.settings
    if not s.rate_limit_enabled or deps.limiter is None:
        return None
    own = Limit(s.job_rate_limit_stream if job.stream else s.job_rate_limit_invoke)
    try:
        decision = await deps.limiter.hit([(f"job:{name}", own), ("job:all", Limit(s.job_rate_limit_all))])
    except AppError:
        log.warning("ratelimit.unavailable", failing="open", job=name)
        return None
    if decision.allowed:
        return None
    if deps.stats is not None:
        deps.stats.bump("deferred")
    if deps.metrics is not None:
        await deps.metrics.event("deferred", name)
        await deps.metrics.rate_limited(f"job:{name}")
    log.info("job.deferred", task_id=job.task_id, delay=decision.retry_after, job=name)
    return max(decision.retry_after, 0.05)
