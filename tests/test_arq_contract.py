"""The private names of arq and aiosqlite this project relies on (kit/arq_contract.py) still exist
in the installed versions: an upgrade that removes one fails here, not silently in production."""

from __future__ import annotations

import asyncio
import inspect

import aiosqlite
import arq.constants
from arq.worker import Worker, func

from agent_service.kit.arq_contract import AIOSQLITE_PRIVATE, ARQ_CONSTANTS, ARQ_WORKER_PRIVATE
from agent_service.kit.fast_worker import FastWorker


async def test_arq_worker_internals_we_override_are_there() -> None:
    async def noop(ctx: dict[str, object]) -> None:
        return None

    worker = Worker(functions=[func(noop, name="noop")], queue_name="contract", handle_signals=False,
                    job_completion_wait=3)
    missing = [name for name in ARQ_WORKER_PRIVATE if not hasattr(worker, name)]
    assert not missing, f"arq.worker.Worker lost {missing}: review kit/fast_worker.py"
    assert worker._job_completion_wait == 3
    assert isinstance(worker.sem, asyncio.BoundedSemaphore) and worker.job_counter == 0
    # the overridden methods keep their shapes
    assert inspect.iscoroutinefunction(Worker._poll_iteration)
    assert list(inspect.signature(Worker.handle_sig_wait_for_completion).parameters) == ["self", "signum"]


def test_fast_worker_overrides_only_names_in_the_contract() -> None:
    own = {name for name, value in vars(FastWorker).items() if callable(value) and name.startswith("_")
           and not name.startswith("__")}
    ours = {"_poll_once", "_restore_slots", "_collect_finished", "_force_exit", "_claim_and_beat", "_wait_for_work",
            "_until_look", "_until_beat"}
    assert own <= set(ARQ_WORKER_PRIVATE) | ours, own - set(ARQ_WORKER_PRIVATE)


def test_arq_key_constants_are_there() -> None:
    assert all(isinstance(getattr(arq.constants, name, None), str) for name in ARQ_CONSTANTS)


async def test_aiosqlite_connection_thread_can_be_made_a_daemon(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pending = aiosqlite.connect(str(tmp_path / "x.db"))
    for name in AIOSQLITE_PRIVATE:
        assert hasattr(pending, name), f"aiosqlite.Connection lost {name}: review kit/db_sqlite.py"
    pending._thread.daemon = True
    conn = await pending
    try:
        assert conn._thread.daemon
    finally:
        await conn.close()
