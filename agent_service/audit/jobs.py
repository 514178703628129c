"""The audit domain's maintenance: archive and delete entries past AUDIT_LOG_RETENTION_DAYS
(daily at 02:00 by default); the crash-safe body is in audit/archive.py."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent_service.audit.archive import archive_key, archive_old_audit_logs
from agent_service.audit.schemas import AuditArchive
from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import MaintenanceJob


async def _run(deps: Deps) -> AuditArchive:
    s = deps.settings
    result = await archive_old_audit_logs(deps.db, archive_dir=Path(s.audit_archive_dir),
                                          retention_days=s.audit_log_retention_days, now=deps.clock(),
                                          key=archive_key(s), clock=deps.clock)
    return msgspec.convert(result, AuditArchive)


ARCHIVE_OLD_AUDIT_LOGS = MaintenanceJob(name="archive_old_audit_logs",
                                        schedule_setting="cron_archive_old_audit_logs", run=_run)
