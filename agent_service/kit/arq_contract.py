"""Every private name of arq (and aiosqlite) this project depends on, in one place.

tests/test_arq_contract.py checks each against the installed version, so an upgrade that renames
or removes one fails a test instead of silently changing how workers behave.
"""

from __future__ import annotations

# attributes and methods of arq.worker.Worker overridden or read by kit/fast_worker.py
ARQ_WORKER_PRIVATE = (
    "_poll_iteration",  # one poll: FastWorker loops it within a poll period and survives Redis errors
    "_release_sem_dec_counter_on_complete",  # called when a job ends: wakes FastWorker at once
    "_job_completion_wait",  # the drain time on SIGTERM (set from WORKER_DRAIN_SECONDS)
    "handle_sig_wait_for_completion",  # the draining signal handler (a second signal stops at once)
    "handle_sig",
    "tasks",  # running jobs by id
    "allow_pick_jobs",
    "in_progress_timeout_s",  # how long a started job is marked in progress: set to the lease
    "sem",  # the job slots (BoundedSemaphore(max_jobs + 1)) …
    "job_counter",  # … and their count: recounted after a Redis error inside start_jobs
    "loop",  # the worker's event loop (the forced-exit timer after a drain)
    "_cancel_aborted_jobs", "_jobs_started",  # called by FastWorker's own poll, as arq's poll calls them
    "_last_health_check",  # when arq last wrote its health key: an idle FastWorker wakes up for the next
)
# public constants of arq.constants the lease and the queue adapter use
ARQ_CONSTANTS = ("in_progress_key_prefix", "job_key_prefix", "result_key_prefix", "retry_key_prefix",
                 "health_check_key_suffix")
# aiosqlite.Connection: the worker thread, made a daemon so it never keeps a stopping process alive
AIOSQLITE_PRIVATE = ("_thread",)
