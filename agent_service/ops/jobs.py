"""The ops domain's maintenance: old files out of TEMP_DIR (daily at 03:00 by default)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent_service.kit.deps import Deps
from agent_service.kit.maintenance import MaintenanceJob
from agent_service.kit.tempfiles import TempFilesCleanup, cleanup_temp_files


async def _run(deps: Deps) -> TempFilesCleanup:
    s = deps.settings
    result = await cleanup_temp_files(Path(s.temp_dir), s.temp_file_max_age_hours, deps.clock(), clock=deps.clock)
    return msgspec.convert(result, TempFilesCleanup)


CLEANUP_TEMP_FILES = MaintenanceJob(name="cleanup_temp_files", schedule_setting="cron_cleanup_temp_files", run=_run)
