"""The worker loop of `python -m agent_service worker`: arq's Worker, made fast and hard to wedge.

- **Fast**: arq's loop sleeps `poll_delay` between polls, so once every slot is busy it starts at
  most `max_jobs` jobs per `poll_delay` however short the jobs are, and each poll spends about
  four round trips per due id (kit/wakeup.py). Here a finished job wakes the loop at once, and
  one script claims the due jobs for every free slot in one round trip.
- **Woken, not polling**: an idle worker blocks on the queue's wake key (kit/wakeup.py), pushed in
  the same round trip as each enqueue: a new job starts within a couple of round trips. Its
  fallback is to look again after `poll_delay`, four times longer each time nothing came, up to
  IDLE_POLL_MAX (or `poll_delay`, if longer), and never later than its next reason to: the next
  deferred job's time, a due job's in-progress mark expiring (its worker may be dead), the
  heartbeat (arq's health key) or a cron job's window. The plain `arq` CLI (stock Worker) keeps
  arq's poll loop: every `poll_delay`.
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
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from agent_service.kit.wakeup import QueueWaiter, wake
from agent_service.logging import get_logger

log = get_logger("agent_service.worker")
BACKOFF_MAX = 5.0
POLL_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0
# a job's ctx entry: `ctx[HANDOFF](awaitable)` hands the job's last write over to the worker, which
# waits for it alongside its own bookkeeping of the job's end (in finish_job) instead of after it
HANDOFF = "fast_worker_handoff"
IDLE_POLL_MAX = 2.0  # the idle fallback's ceiling: covers a job queued without the wake signal
MIN_WAIT = 0.001  # below this, poll again rather than block (BLPOP's timeout 0 means forever)


class FastWorker(Worker):
    def __init__(self, *args: Any, outage_exit_seconds: float = 300.0, lease_seconds: float | None = None,
                 **kwargs: Any) -> None:
        _use_uvloop()
        super().__init__(*args, **kwargs)
        if lease_seconds:
            # arq marks a started job in progress for its longest time limit (+10 s); the job's
            # own lease renewal shortens it, and this closes the moment before the first renewal
            self.in_progress_timeout_s = lease_seconds
        self._slot_freed = asyncio.Event()
        self._outage_exit = outage_exit_seconds
        self._outage_since: float | None = None
        self._draining = False
        self._waiter: QueueWaiter | None = None
        self._fallback = self.poll_delay_s
        self._next_look: float | None = None  # time.time() of the next deferred job or expiring mark
        self._handed: dict[str, Awaitable[None]] = {}
        self.ctx[HANDOFF] = self._handed.__setitem__  # (job id, awaitable): see HANDOFF
        self.exit_code = 0

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    async def _poll_iteration(self) -> None:
        # returns only in burst mode (arq's outer poll() would sleep the rest of a poll period):
        # it loops, claiming and then waiting for a reason to claim again; after a Redis failure
        # _poll_once has waited out a backoff step already
        while True:
            self._slot_freed.clear()
            claimed = await self._poll_once(self._claim_and_beat, POLL_TIMEOUT)
            if self.burst:
                return
            if claimed:
                await self._poll_once(self._wait_for_work, None)  # it bounds its own blocking

    async def _claim_and_beat(self) -> None:
        """arq's poll: the heartbeat and the crons first (a cron job it queues is then claimed at
        once), then the due jobs for every free slot, claimed in one round trip and started."""
        await self.heart_beat()
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            want = self.max_jobs - self.job_counter
            if self.burst and self.max_burst_jobs >= 0:
                want = min(want, self.max_burst_jobs - self._jobs_started())
            if want > 0:
                if self._waiter is None:
                    self._waiter = QueueWaiter(self.pool, self.queue_name, scan=self.queue_read_limit,
                                               mark_prefix=in_progress_key_prefix)
                claimed = await self._waiter.claim(want, now_ms=timestamp_ms(),
                                                   mark_ms=int(self.in_progress_timeout_s * 1000))
                for job_id, score in claimed.jobs:
                    # counted as arq's start_jobs counts them: its bookkeeping (sem, tasks) stays right
                    await self.sem.acquire()
                    self.job_counter += 1
                    task = self.loop.create_task(self.run_job(job_id, score))
                    task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                    self.tasks[job_id] = task
                looks = [ms / 1000 for ms in (claimed.next_due_ms,) if ms is not None]
                if claimed.held_ms is not None:
                    looks.append(time.time() + claimed.held_ms / 1000 + 0.005)
                self._next_look = min(looks, default=None)
                if claimed.jobs:
                    self._fallback = self.poll_delay_s
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()

    async def _wait_for_work(self) -> None:
        """Until there may be something to claim: a slot freeing when every slot is busy (or the
        worker is draining), else the wake signal, or the earliest reason to look (module doc)."""
        if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
            bound = self.poll_delay_s if not self.allow_pick_jobs else self._until_look(claiming=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bound):
                    await self._slot_freed.wait()
            return
        timeout = self._until_look(claiming=True)
        if timeout < MIN_WAIT or self._waiter is None:
            return
        async with asyncio.timeout(timeout + POLL_TIMEOUT):  # a frozen Redis must not hang the loop
            woken = await self._waiter.wait(timeout)
        if woken:
            self._fallback = self.poll_delay_s
            if not self.allow_pick_jobs or self.job_counter >= self.max_jobs:
                await self._waiter.pass_on()  # full meanwhile: another idle worker can use it
        elif timeout >= self._fallback:
            self._fallback = min(self._fallback * 4, max(self.poll_delay_s, IDLE_POLL_MAX))

    def _until_look(self, *, claiming: bool) -> float:
        """Seconds until the loop must look again: the heartbeat and the crons always, and while it
        has free slots the next deferred job, an expiring mark and the idle fallback."""
        now = time.time()
        bounds = [self._until_beat()]
        if claiming:
            bounds.append(self._fallback)
            if self._next_look is not None:
                bounds.append(self._next_look - now)
        window = 2 * max(self.poll_delay_s, 0.5)  # arq's run_cron queues a cron job this far ahead
        for cron_job in self.cron_jobs:
            next_run: datetime | None = cron_job.next_run
            bounds.append(0.0 if next_run is None else next_run.timestamp() - window - now)
        return max(0.0, min(bounds))

    def _until_beat(self) -> float:
        """Seconds until arq's health key is due again (it expires a second after that)."""
        return max(0.0, self._last_health_check + self.health_check_interval - time.time())

    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
                         keep_result_forever: bool, incr_score: int | None, keep_in_progress: float | None) -> None:
        last = self._handed.pop(job_id, None)
        try:
            await super().finish_job(job_id, finish, result_data, result_timeout_s, keep_result_forever,
                                     incr_score, keep_in_progress)
        finally:
            if last is not None:  # under way since the job handed it over: both end in about one round trip
                try:
                    await last
                except Exception as exc:  # the job's own business: it handles what it expects
                    log.warning("worker.job_handoff_failed", job_id=job_id, error=type(exc).__name__)
        if not finish:  # back in the queue (a retry, a deferral, a shutdown): any idle worker may take it
            with contextlib.suppress(RedisError, OSError):
                await wake(self.pool, self.queue_name)

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

    async def _poll_once(self, step: Callable[[], Awaitable[None]], limit: float | None) -> bool:
        """One step of the loop (a claim, or a wait); False after a Redis failure (already waited
        out a backoff step)."""
        loop = asyncio.get_running_loop()
        self._collect_finished()
        try:
            # a frozen (not stopped) Redis must not hang the loop: arq's pool has no read timeout
            async with asyncio.timeout(limit):
                await step()
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
            step_s = min(BACKOFF_MAX, 0.25 * 2 ** min(6, int(now - self._outage_since)))
            await asyncio.sleep(step_s * random.uniform(0.5, 1.0))  # jitter: workers do not retry in step
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


def _use_uvloop() -> None:
    """The process's own loop (`python -m agent_service worker`, not one a caller runs it in) on
    uvloop when it is installed (uvicorn[standard] brings it): its callbacks, sockets and thread
    hand-offs cost about half of asyncio's, which a busy worker spends most of its time in."""
    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop(uvloop.new_event_loop())
