"""Part of the one writer of task state (tasks/lifecycle.py): how its changes reach the task's
Redis keys and who is told of them. Only the lifecycle modules call these; a reader that needs
the task's keys or the queue takes them through `lifecycle.live` / `lifecycle.queue`."""

from __future__ import annotations

from collections.abc import Callable

from agent_service.kit.deps import Deps
from agent_service.kit.rounds import Round
from agent_service.tasks import repository as task_store
from agent_service.tasks.live import Published, TaskLive
from agent_service.tasks.queue import JobQueue
from agent_service.tasks.schemas import StateEvent, TaskEvent


def live(deps: Deps) -> TaskLive:
    return deps.part(TaskLive.of)


def queue(deps: Deps) -> JobQueue:
    return deps.part(JobQueue.of)


def outbox_listener(deps: Deps) -> Callable[[], None]:
    """Told (no I/O, never raising) when a change wrote a `task_events_outbox` row; the entry
    points provide the webhooks domain's wake-up."""
    return lambda: None


async def publish(deps: Deps, task_id: str, event: TaskEvent, *, progress: int | None = None) -> None:
    noted(deps, event)
    await live(deps).append(task_id, event, progress=progress)


def noted(deps: Deps, event: TaskEvent) -> None:
    """An event whose change also wrote an outbox row wakes the webhooks side (no polling delay)."""
    if isinstance(event, StateEvent) and event.state in task_store.OUTBOX_EVENTS:
        deps.part(outbox_listener)()


def publish_into(deps: Deps, rnd: Round, task_id: str, events: list[Published]) -> None:
    for event, _ in events:
        noted(deps, event)
    live(deps).append_into(rnd, task_id, events)


async def send(deps: Deps, task_id: str, events: list[Published]) -> None:
    """A task's events, in order, in one round trip."""
    rnd = Round(deps.redis)
    publish_into(deps, rnd, task_id, events)
    await rnd.send()
