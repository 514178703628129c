"""The worker loop of `python -m agent_service worker`: arq's Worker, made fast and hard to wedge.

- **Fast**: arq's loop sleeps `poll_delay` between polls, so once every slot is busy it starts at
  most `max_jobs` jobs per `poll_delay` however short the jobs are. Here a finished job wakes the
  loop at once; `poll_delay` only bounds how long a newly queued job waits on an idle worker.
- **Outages are waited out**: arq's loop dies on the first Redis error and the process lingers
  without a heartbeat. Here a failing poll logs one line, backs off (capped), and the loop goes on
  when Redis answers again; past `outage_exit_seconds` the process exits non-zero so that its
  supervisor restarts it — it never lingers as a zombie.
- **Graceful drain**: on SIGTERM arq stops taking jobs and lets running ones finish for
  `job_completion_wait` (WORKER_DRAIN_SECONDS), then cancels the rest, which arq puts back in the
  queue. A second signal stops at once. Closing never blocks on a Redis that is gone.

The arq internals overridden here are listed in kit/arq_contract.py, whose test fails when an arq
upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from typing import Any

from arq.worker import Worker
from redis.exceptions import RedisError

from agent_service.logging import get_logger

log = get_logger("agent_service.worker")
BACKOFF_MAX = 5.0
POLL_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0


class FastWorker(Worker):
    def __init__(self, *args: Any, outage_exit_seconds: float = 300.0, lease_seconds: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lease_seconds:
            # arq marks a started job in progress for its longest time limit (+10 s); the job's
            # own lease renewal shortens it, and this closes the moment before the first renewal
            self.in_progress_timeout_s = lease_seconds
        self._slot_freed = asyncio.Event()
        self._outage_exit = outage_exit_seconds
        self._outage_since: float | None = None
        self._draining = False
        self.exit_code = 0

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    async def _poll_iteration(self) -> None:
        # Loop within one poll period; arq's outer poll() then sleeps only the remainder (~0).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_delay_s
        while True:
            self._slot_freed.clear()
            if not await self._poll_once():
                return
            remaining = deadline - loop.time()
            if remaining <= 0 or self.burst:
                return
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the cancellation that stops
            # the worker when the inner wait completes at the same moment
            try:
                async with asyncio.timeout(remaining):
                    await self._slot_freed.wait()
            except TimeoutError:
                return

    def _collect_finished(self) -> None:
        """Take finished job tasks out before arq does: arq re-raises the first one's error (a job
        whose Redis call failed during an outage) out of the poll, which would read as a new
        outage; here each is logged once and dropped."""
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    log.warning("worker.job_task_failed", job_id=job_id, error=type(exc).__name__)

    async def _poll_once(self) -> bool:
        """One arq poll; False after a Redis failure (already waited out a backoff step)."""
        loop = asyncio.get_running_loop()
        self._collect_finished()
        try:
            # a frozen (not stopped) Redis must not hang the loop: arq's pool has no read timeout
            async with asyncio.timeout(POLL_TIMEOUT):
                await super()._poll_iteration()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._restore_slots()
            now = loop.time()
            if self._outage_since is None:
                self._outage_since = now
                log.error("worker.redis_unavailable", error=type(exc).__name__, detail=str(exc)[:200])
            elif now - self._outage_since > self._outage_exit:
                log.error("worker.redis_outage_too_long", seconds=round(now - self._outage_since))
                self.exit_code = 1
                raise SystemExit(1) from None
            step = min(BACKOFF_MAX, 0.25 * 2 ** min(6, int(now - self._outage_since)))
            await asyncio.sleep(step * random.uniform(0.5, 1.0))  # jitter: workers do not retry in step
            return False
        if self._outage_since is not None:
            log.warning("worker.redis_back", after_s=round(loop.time() - self._outage_since, 1))
            self._outage_since = None
        return True

    async def _restore_slots(self) -> None:
        """arq's start_jobs takes a slot before its Redis calls and leaks it when one fails with a
        connection error: recount the slots from the jobs really running."""
        running = sum(not t.done() for t in self.tasks.values())
        self.job_counter = running
        self.sem = asyncio.BoundedSemaphore(self.max_jobs + 1)  # arq's own bound
        for _ in range(running):  # each running job releases its slot when it ends
            await self.sem.acquire()

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None:
        if self._draining:  # a second signal: stop now (arq re-queues what is running)
            log.warning("worker.stop_now", signal=signal.Signals(signum).name)
            self.handle_sig(signum)
            return
        self._draining = True
        log.info("worker.draining", seconds=self._job_completion_wait, running=len(self.tasks))
        super().handle_sig_wait_for_completion(signum)
        # exit always happens: whatever hangs after the drain, the process is gone in bounded time
        # (its unfinished jobs are back in the queue, or their leases expire)
        self.loop.call_later(self._job_completion_wait + 2 * CLOSE_TIMEOUT, self._force_exit)

    def _force_exit(self) -> None:
        log.error("worker.forced_exit", reason="shutdown did not finish in time")
        os._exit(self.exit_code or 1)

    async def close(self) -> None:
        """arq's close, bounded: with Redis gone it would fail before the shutdown hook ran."""
        try:
            await asyncio.wait_for(super().close(), CLOSE_TIMEOUT)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("worker.close_incomplete", error=type(exc).__name__)
            if self.on_shutdown:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.on_shutdown(self.ctx), CLOSE_TIMEOUT)

    def run(self) -> None:
        try:
            super().run()
        except SystemExit:
            pass
        if self.exit_code:
            os._exit(self.exit_code)  # threads of a failed process must not keep it alive
