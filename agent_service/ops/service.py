"""The admin overview of the job system: queue depth, workers alive, throughput, recent failures."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import msgspec

from agent_service.kit.deps import Deps
from agent_service.ops.schemas import JobsOverview, MinuteStat, QueueDepth, WorkerInfo
from agent_service.ops.workers import WorkerBoard
from agent_service.tasks import service as tasks

WINDOW_MINUTES = 15


def _minute(ts: str) -> datetime:
    return datetime.fromisoformat(ts).replace(second=0, microsecond=0)


async def overview(deps: Deps) -> JobsOverview:
    now = deps.clock()
    depth = await tasks.queue_depth(deps)
    states = await tasks.state_counts(deps)
    workers = [msgspec.convert(w, WorkerInfo, strict=False) for w in await WorkerBoard.of(deps).alive()]
    since = (now - timedelta(minutes=WINDOW_MINUTES - 1)).replace(second=0, microsecond=0)
    counts: Counter[tuple[datetime, str]] = Counter(
        (_minute(ts), state) for ts, state in await tasks.finished_since(deps, since)
    )
    throughput = [
        MinuteStat(minute=m, completed=counts[(m, "SUCCESS")], failed=counts[(m, "FAILURE")],
                   cancelled=counts[(m, "REVOKED")])
        for m in (since + timedelta(minutes=i) for i in range(WINDOW_MINUTES))
    ]
    return JobsOverview(
        queue=QueueDepth(queued=depth["queued"], deferred=depth["deferred"],
                         in_progress=states.get("STARTED", 0), retrying=states.get("RETRY", 0)),
        workers=sorted(workers, key=lambda w: w.worker_id), throughput=throughput,
        recent_failures=await tasks.recent_failures(deps, limit=20), window_minutes=WINDOW_MINUTES,
    )
