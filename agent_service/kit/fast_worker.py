"""An arq Worker that picks the next job as soon as a slot frees.

arq's loop sleeps `poll_delay` between polls, so once every slot is busy it starts at most
`max_jobs` jobs per `poll_delay` (about 20 jobs/s with its defaults) however short the jobs
are. Here a finished job wakes the loop at once; `poll_delay` only bounds how long a newly
queued job can wait when the worker is idle.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq.worker import Worker


class FastWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot_freed = asyncio.Event()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    async def _poll_iteration(self) -> None:
        # Loop within one poll period; arq's outer poll() then sleeps only the remainder (~0).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_delay_s
        while True:
            self._slot_freed.clear()
            await super()._poll_iteration()
            remaining = deadline - loop.time()
            if remaining <= 0 or self.burst:
                return
            try:
                await asyncio.wait_for(self._slot_freed.wait(), remaining)
            except TimeoutError:
                return
