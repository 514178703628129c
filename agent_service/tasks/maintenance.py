"""Run a maintenance job: from cron (once per slot across all workers) or on demand (a task).

Each run leaves one audit entry, its last result is kept for the admin API, and an on-demand
run is a task like any other (state, progress, result = the job's return value).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from agent_service.audit.archive import archive_old_audit_logs
from agent_service.audit.service import audit_entry
from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.redis import redis_guard
from agent_service.logging import get_logger
from agent_service.tasks import housekeeping as maintenance
from agent_service.tasks import repository as task_store

log = get_logger("agent_service.maintenance")
LAST_KEY = "agent:maintenance:last"
SLOT_TTL = 2 * 24 * 3600

Body = Callable[[Deps], Awaitable[dict[str, Any]]]


async def _sessions(deps: Deps) -> dict[str, Any]:
    return await maintenance.cleanup_expired_sessions(deps.db, deps.clock(), clock=deps.clock)


async def _audit(deps: Deps) -> dict[str, Any]:
    s = deps.settings
    return await archive_old_audit_logs(deps.db, archive_dir=Path(s.audit_archive_dir),
                                        retention_days=s.audit_log_retention_days, now=deps.clock(), clock=deps.clock)


async def _blacklist(deps: Deps) -> dict[str, Any]:
    return await maintenance.cleanup_token_blacklist(deps.redis, deps.clock(), clock=deps.clock)


async def _temp(deps: Deps) -> dict[str, Any]:
    s = deps.settings
    return await maintenance.cleanup_temp_files(Path(s.temp_dir), s.temp_file_max_age_hours, deps.clock(),
                                                clock=deps.clock)


JOBS: dict[str, Body] = {
    "cleanup_expired_sessions": _sessions,
    "archive_old_audit_logs": _audit,
    "cleanup_token_blacklist": _blacklist,
    "cleanup_temp_files": _temp,
}


@redis_guard
async def _claim_slot(deps: Deps, name: str, slot: str) -> bool:
    """Cron slots are claimed in Redis: a worker whose clock is a minute off still finds the slot
    taken (arq's own job-id dedupe only lasts while the job or its result exists)."""
    return bool(await deps.redis.set(f"agent:maintenance:slot:{name}:{slot}", b"1", nx=True, ex=SLOT_TTL))


@redis_guard
async def _keep_last(deps: Deps, name: str, record: dict[str, Any]) -> None:
    await deps.redis.hset(LAST_KEY, name, msgspec.json.encode(record).decode())  # type: ignore[misc]


@redis_guard
async def last_results(deps: Deps) -> dict[str, Any]:
    raw = await deps.redis.hgetall(LAST_KEY)  # type: ignore[misc]
    return {k.decode(): msgspec.json.decode(v) for k, v in raw.items()}


async def run(deps: Deps, name: str, *, task_id: str | None, slot: str | None) -> dict[str, Any] | None:
    if slot is not None and not await _claim_slot(deps, name, slot):
        log.info("maintenance.skipped", job=name, slot=slot, reason="slot already run by another worker")
        return None
    if task_id is not None:
        await task_store.mark_started(deps.db, task_id, tries=1, now=deps.clock())
        await deps.events.publish(task_id, "state", {"state": "STARTED"}, progress=0)
    started = time.monotonic()
    trigger = {"trigger": "cron", "slot": slot} if slot else {"trigger": "manual", "task_id": task_id}
    try:
        result = await JOBS[name](deps)
    except Exception as exc:
        reason = exc.detail if isinstance(exc, AppError) else f"{type(exc).__name__} in {name}"
        log.exception("maintenance.failed", job=name, **trigger)
        deps.record(audit_entry("EXECUTE", "maintenance", actor="system", resource_id=name, status=500,
                                metadata={**trigger, "error": reason}))
        if task_id is not None:
            await task_store.mark_finished(deps.db, task_id, state="FAILURE", error=reason, now=deps.clock())
            await deps.events.publish(task_id, "state", {"state": "FAILURE", "error": reason})
        raise
    duration = round(time.monotonic() - started, 4)
    await _keep_last(deps, name, {"result": result, "ran_at": deps.clock().isoformat(), "duration": duration,
                                  **trigger})
    deps.record(audit_entry("EXECUTE", "maintenance", actor="system", resource_id=name, status=200,
                            metadata={**trigger, "result": result}))
    if task_id is not None:
        await deps.events.store_result(task_id, result)
        await task_store.mark_finished(deps.db, task_id, state="SUCCESS", error=None, now=deps.clock())
        await deps.events.publish(task_id, "state", {"state": "SUCCESS"}, progress=100)
    log.info("maintenance.done", job=name, duration=duration, **trigger)
    return result
