"""Part of the one writer of task state (tasks/lifecycle.py calls these, nobody else): a run's
start and its success in SQL, each written in one statement with those of the runs that start or
succeed at the same moment (kit/coalesce.py): under load, a worker's concurrent runs share the
database's per-statement and per-commit cost instead of queueing for it."""

from __future__ import annotations

from agent_service.kit.coalesce import Coalescer
from agent_service.kit.deps import Deps
from agent_service.tasks import repository as task_store
from agent_service.tasks.repository import Counts


class _Mark:
    """One run's start or success, waiting for its statement."""

    __slots__ = ("changed", "counts", "lost", "task_id", "tries")

    def __init__(self, task_id: str, *, tries: int = 0, lost: bool = False) -> None:
        self.task_id, self.tries, self.lost = task_id, tries, lost
        self.counts: Counts | None = None
        self.changed = False


async def mark_started(deps: Deps, task_id: str, *, tries: int, lost: bool) -> Counts | None:
    """STARTED in SQL and the task's counts; None (nothing written) if it is finished or unknown."""
    mark = _Mark(task_id, tries=tries, lost=lost)
    await deps.part(_starts).submit(mark)
    return mark.counts


async def mark_succeeded(deps: Deps, task_id: str) -> bool:
    """SUCCESS in SQL (with its outbox row); False if another finish came first."""
    mark = _Mark(task_id)
    await deps.part(_successes).submit(mark)
    return mark.changed


def _starts(deps: Deps) -> Coalescer[_Mark]:
    async def write(marks: list[_Mark]) -> list[BaseException | None]:
        got = await task_store.mark_started_many(deps.db, [(m.task_id, m.tries, m.lost) for m in marks],
                                                 now=deps.clock())
        for m in marks:
            m.counts = got.get(m.task_id)
        return [None] * len(marks)

    return Coalescer(write)


def _successes(deps: Deps) -> Coalescer[_Mark]:
    async def write(marks: list[_Mark]) -> list[BaseException | None]:
        changed = await task_store.mark_succeeded_many(deps.db, [m.task_id for m in marks], now=deps.clock())
        for m in marks:
            m.changed = m.task_id in changed
        return [None] * len(marks)

    return Coalescer(write)
