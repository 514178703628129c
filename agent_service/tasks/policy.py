"""Job policy: retry with exponential backoff and full jitter (capped, transient failures only),
and the limits shared by all workers: each user's cap on running jobs (tasks/fairness.py) and the
job rate limits. Over a limit a job is deferred, not failed, and the deferral is not a try."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from agent_service.config import Settings
from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.ratelimit import Limit
from agent_service.kit.rounds import Reply, Round
from agent_service.logging import get_logger
from agent_service.tasks import queue
from agent_service.tasks.fairness import UserSlots
from agent_service.tasks.schemas import AgentJob

log = get_logger("agent_service.tasks")
PARKED = 0.0  # admit's answer for a job parked by its owner's cap: its queue entry is moved already


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


def running_cap(settings: Settings, tier: str | None) -> int:
    """How many jobs of an owner of `tier` may run at once (a job queued before tiers were
    recorded, or of an unknown tier, gets the default tier's cap)."""
    caps = {"free": settings.jobs_running_free, "pro": settings.jobs_running_pro,
            "enterprise": settings.jobs_running_enterprise}
    return caps.get(tier or settings.default_tier, caps[settings.default_tier])


def job_tier(tier: str | None, *, is_admin: bool, default: str) -> str:
    """The tier a submitted job runs under. An admin's jobs get the enterprise cap, not none: a
    scripted bulk run (or a leaked admin key) must not take every slot either, and the enterprise
    cap is already a whole default worker (WORKER_MAX_JOBS)."""
    return "enterprise" if is_admin else tier or default


def slots(deps: Deps) -> UserSlots:
    return deps.part(UserSlots.of)


def _now_ms() -> int:
    return int(time.time() * 1000)  # queue scores are wall-clock ms, as arq compares them


class Admission:
    """The owner's running cap, asked in the round of the job's start (`take_slot_into`)."""

    def __init__(self, slot: Reply | None) -> None:
        self._slot = slot

    @property
    def parked(self) -> bool:
        """Every slot of the owner was taken: the job is parked (its queue entry moved about a
        lease ahead, woken as soon as a slot is given back; tasks/fairness.py). A job without an
        owner has nobody to be fair to."""
        return self._slot is not None and not self._slot.value


def take_slot_into(rnd: Round, deps: Deps, job: AgentJob, *, score: int) -> Admission:
    """The first of the shared limits: one of the owner's slots, taken in the round of the job's
    start. Admitted, the job holds it until `release_into`'s round is sent (however the run ends);
    then the job rate limits (`rate_limited`), which do not count the parked jobs' attempts.

    A deferral is not a try: the caller re-queues the job and the attempt count ignores it."""
    if job.owner_id is None:
        return Admission(None)  # no owner to be fair to (not submitted by a user)
    s = deps.settings
    fallback = s.job_lease_seconds * (0.5 + 0.5 * deps.rng())  # jittered: parked jobs do not return in step
    return Admission(slots(deps).acquire_into(
        rnd, job.owner_id, job.task_id, cap=running_cap(s, job.tier), score=score,
        parked_until_ms=_now_ms() + int(fallback * 1000), waiting=queue.waiting_keys(deps.prefix, job.owner_id)))


async def parked(deps: Deps, job: AgentJob, name: str) -> float:
    """The job was parked by its owner's cap: PARKED (nothing to add to its queue score)."""
    await _deferred(deps, job, name, PARKED, reason="user_cap")
    return PARKED


def release_into(rnd: Round, deps: Deps, job: AgentJob, *, wake: bool = True) -> None:
    """Give the job's slot back with the round's other writes, and wake the owner's first parked
    job: at its own place in the queue, but not before the place of a low job submitted now (other
    users' jobs already waiting go first). With Redis away the slot expires by itself within a
    lease. `wake=False` for a job the rate limits deferred: they are what holds jobs back now, a
    woken job would only meet them."""
    if job.owner_id is None:
        return
    now = _now_ms()
    slots(deps).release_into(rnd, job.owner_id, job.task_id, now_ms=now, floor_ms=now - queue.FAIR_WINDOW_MS,
                             wake=wake)


async def rate_limited(deps: Deps, job: AgentJob, name: str) -> float | None:
    """The job rate limits: None to run now, else seconds to defer the job."""
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
    delay = max(decision.retry_after, 0.05)
    await _deferred(deps, job, name, delay, reason="rate_limit")
    if deps.metrics is not None:
        await deps.metrics.rate_limited(f"job:{name}")
    return delay


async def _deferred(deps: Deps, job: AgentJob, name: str, delay: float, *, reason: str) -> None:
    if deps.stats is not None:
        deps.stats.bump("deferred")
    if deps.metrics is not None:
        await deps.metrics.event("deferred", name)
    log.info("job.deferred", task_id=job.task_id, delay=delay, job=name, reason=reason)
