"""kit/coalesce.py (natural batching) and the batched task submission built on it: submissions
made at the same time share one INSERT and one Redis round trip, and each keeps its own outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from agent_service.config import Settings
from agent_service.errors import ServiceUnavailable
from agent_service.kit.coalesce import Coalescer
from agent_service.kit.deps import Deps, open_deps
from agent_service.tasks import lifecycle, lifecycle_submit
from agent_service.tasks import repository as task_store
from agent_service.tasks.lifecycle import Submission
from agent_service.tasks.schemas import StateEvent


class Store:
    """A write that takes one loop turn per batch, as a real store would, and records its batches."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail or set()
        self.release = asyncio.Event()
        self.release.set()

    async def write(self, items: list[int]) -> list[BaseException | None]:
        self.batches.append(items)
        await self.release.wait()
        return [ServiceUnavailable(f"item {i}") if i in self.fail else None for i in items]


async def test_calls_made_while_a_batch_is_written_go_out_together_each_with_its_outcome() -> None:
    store = Store(fail={3})
    coalescer = Coalescer(store.write)
    store.release.clear()
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)  # the first batch is under way, holding item 0 only
    rest = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    store.release.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert store.batches == [[0], [1, 2, 3, 4, 5]]
    assert [type(o).__name__ if o else None for o in outcomes] == [None, None, None, "ServiceUnavailable", None, None]
    assert (coalescer.batches, coalescer.items) == (2, 6)


async def test_a_failed_write_fails_each_caller_with_an_error_of_its_own() -> None:
    async def broken(items: list[int]) -> list[BaseException | None]:
        raise ServiceUnavailable("the store is away", headers={"Retry-After": "2"})

    coalescer = Coalescer(broken)
    outcomes = await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, ServiceUnavailable) and o.headers == {"Retry-After": "2"} for o in outcomes)
    assert len({id(o) for o in outcomes}) == 3  # a caller adding headers to its error touches no one else's
    outcomes[0].headers = {"RateLimit-Remaining": "7"}  # type: ignore[union-attr]
    assert outcomes[1].headers == {"Retry-After": "2"}  # type: ignore[union-attr]


async def test_a_cancelled_caller_does_not_take_its_item_back_nor_hold_up_the_others() -> None:
    store = Store()
    coalescer = Coalescer(store.write)
    store.release.clear()
    waiting = [asyncio.create_task(coalescer.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    waiting[1].cancel()
    store.release.set()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError) and done[0] is None and done[2] is None
    assert sorted(i for batch in store.batches for i in batch) == [0, 1, 2]


@pytest.fixture
async def deps(settings: Settings) -> AsyncIterator[Deps]:
    d = await open_deps(settings)
    yield d
    await d.aclose()


async def test_concurrent_submissions_share_statements_and_each_task_is_queued_with_its_event(deps: Deps) -> None:
    ids = [uuid.uuid4().hex for _ in range(30)]
    await asyncio.gather(*(lifecycle.submit(deps, Submission(
        task_id=task_id, kind="invoke", function="nobody_runs_this", payload={"task_id": task_id}, agent_id="echo",
        owner_id="u1", request_id=None)) for task_id in ids))
    intake = deps.part(lifecycle_submit._intake)
    assert intake.items == 30 and intake.batches < 30  # written together, not one by one
    for task_id in ids:
        record = await task_store.get(deps.db, task_id)
        assert record is not None and record.state == "PENDING"
        assert await lifecycle.queue(deps).exists(task_id)
        events = [e for _, e in await lifecycle.live(deps).read(task_id)]
        assert [e.state for e in events if isinstance(e, StateEvent)] == ["PENDING"]
