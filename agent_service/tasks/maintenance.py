"""Run a maintenance job: from cron (once per slot across all workers) or on demand (a task).

Each run leaves one audit entry, its last run is kept for the admin API, and an on-demand run is
a task like any other (state, progress, result = the job's tagged result), written through
tasks/lifecycle.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import msgspec

from agent_service.audit.service import audit_entry, record
from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import MaintenanceJob, registry
from agent_service.kit.redis import redis_guard
from agent_service.logging import get_logger
from agent_service.tasks import lifecycle
from agent_service.tasks.schemas import MaintenanceResult, MaintenanceRun

log = get_logger("agent_service.maintenance")
SLOT_TTL = 2 * 24 * 3600
_run_decoder = msgspec.json.Decoder(MaintenanceRun)


def _last_key(deps: Deps) -> str:
    return f"{deps.prefix}maintenance:last"


def _slot_key(deps: Deps, name: str, slot: str) -> str:
    return f"{deps.prefix}maintenance:slot:{name}:{slot}"


@redis_guard
async def _claim_slot(deps: Deps, name: str, slot: str) -> bool:
    """Cron slots are claimed in Redis: a worker whose clock is a minute off still finds the slot
    taken (arq's own job-id dedupe only lasts while the job or its result exists)."""
    return bool(await deps.redis.set(_slot_key(deps, name, slot), b"1", nx=True, ex=SLOT_TTL))


@redis_guard
async def _keep_last(deps: Deps, name: str, run: MaintenanceRun) -> None:
    await deps.redis.hset(_last_key(deps), name, msgspec.json.encode(run).decode())  # type: ignore[misc]


@redis_guard
async def last_runs(deps: Deps) -> dict[str, MaintenanceRun]:
    raw = await deps.redis.hgetall(_last_key(deps))  # type: ignore[misc]
    known = {job.name for job in deps.part(registry)}
    return {k.decode(): _run_decoder.decode(v) for k, v in raw.items() if k.decode() in known}


async def _count(deps: Deps, what: str, job: MaintenanceJob, started: float | None = None) -> None:
    """The shared job metrics, as agent jobs count (tasks/runner.py), under the job's own name."""
    if deps.metrics is not None:
        await deps.metrics.event(what, job.name, duration=None if started is None else time.monotonic() - started)


async def run(deps: Deps, job: MaintenanceJob, *, task_id: str | None, slot: str | None) -> MaintenanceResult | None:
    if slot is not None and not await _claim_slot(deps, job.name, slot):
        log.info("maintenance.skipped", job=job.name, slot=slot, reason="slot already run by another worker")
        return None
    if task_id is not None:
        await lifecycle.start(deps, task_id, attempt=1)
    started = time.monotonic()
    await _count(deps, "started", job)
    how: Literal["cron", "manual"] = "cron" if slot else "manual"
    trigger = {"trigger": how, "slot": slot} if slot else {"trigger": how, "task_id": task_id}
    try:
        result = await job.run(deps)
    except asyncio.CancelledError:  # its time limit or a shutdown: counted as ended, not finished
        await _count(deps, "cancelled", job, started)
        raise
    except Exception as exc:  # a body's failure of any kind is audited and ends its task, then re-raised
        reason = exc.detail if isinstance(exc, AppError) else f"{type(exc).__name__} in {job.name}"
        log.exception("maintenance.failed", job=job.name, **trigger)
        await _count(deps, "failed", job, started)
        record(deps, audit_entry("EXECUTE", "maintenance", actor="system", resource_id=job.name, status=500,
                                 metadata={**trigger, "error": reason}))
        if task_id is not None:
            await lifecycle.fail(deps, task_id, reason, attempt=1)
        raise
    duration = round(time.monotonic() - started, 4)
    await _count(deps, "succeeded", job, started)
    assert isinstance(result, MaintenanceResult)  # type: ignore[arg-type,misc]
    await _keep_last(deps, job.name, MaintenanceRun(result=result, ran_at=deps.clock(), duration=duration,
                                                    trigger=how, slot=slot, task_id=task_id))
    record(deps, audit_entry("EXECUTE", "maintenance", actor="system", resource_id=job.name, status=200,
                             metadata={**trigger, "result": msgspec.to_builtins(result)}))
    if task_id is not None:
        await lifecycle.succeed(deps, task_id, result, attempt=1)
    log.info("maintenance.done", job=job.name, duration=duration, **trigger)
    return result
