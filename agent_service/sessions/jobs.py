"""The sessions domain's maintenance: forget sessions past their expiry (hourly by default)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agent_service.clock import Clock, iso, utcnow
from agent_service.kit.db import Database
from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import MaintenanceJob
from agent_service.logging import get_logger
from agent_service.sessions import repository as session_store
from agent_service.sessions.schemas import SessionsCleanup

log = get_logger("agent_service.maintenance")


async def cleanup_expired_sessions(db: Database, now: datetime, *, clock: Clock = utcnow) -> dict[str, Any]:
    deleted = await session_store.delete_expired(db, now)
    result = {
        "deleted_count": deleted,
        "cutoff_time": iso(now),
        "status": "success",
        "started_at": iso(now),
        "completed_at": iso(clock()),
    }
    log.info("maintenance.sessions_cleaned", **result)
    return result


async def _run(deps: Deps) -> SessionsCleanup:
    result = await cleanup_expired_sessions(deps.db, deps.clock(), clock=deps.clock)
    return msgspec.convert(result, SessionsCleanup)


CLEANUP_EXPIRED_SESSIONS = MaintenanceJob(name="cleanup_expired_sessions",
                                          schedule_setting="cron_cleanup_expired_sessions", run=_run)
