"""Priority as a shift of the job's queue score (arq starts the lowest score that is due first).

A job's score is its enqueue time in ms; a high job's score is moved 60 s into the past and a
normal job's 30 s, a low job's not at all. So under a backlog high jobs start before normal
before low, yet a job can only be overtaken by jobs submitted less than 60 s (high over low) or
30 s (high over normal, normal over low) after it: that is the starvation bound. Scheduled jobs
keep their exact time (no shift), so they never start early.
"""

from __future__ import annotations

from datetime import datetime

SHIFT_SECONDS = {"high": 60.0, "normal": 30.0, "low": 0.0}
STARVATION_BOUND_SECONDS = max(SHIFT_SECONDS.values()) - min(SHIFT_SECONDS.values())


def schedule(priority: str, run_at: datetime | None) -> tuple[datetime | None, float | None]:
    """(defer_until, defer_by) for arq's enqueue_job."""
    if run_at is not None:
        return run_at, None
    shift = SHIFT_SECONDS[priority]
    return None, (-shift if shift else None)
