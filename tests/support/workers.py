"""Observing in-process arq workers (the `start_worker` fixture's FastWorkers)."""

from __future__ import annotations

from arq.utils import timestamp_ms
from arq.worker import Worker


async def quiescent(*workers: Worker, due_within: float = 0.0) -> bool:
    """True when none of `workers` is running a job and no job in their queue is due within
    `due_within` seconds: until then nothing can start, finish or be counted, so what a test reads
    next is final. (A claimed job stays in the queue until it finishes, so none slips between.)"""
    if any(not t.done() for w in workers for t in w.tasks.values()):
        return False
    queues = {w.queue_name for w in workers}
    horizon = timestamp_ms() + int(due_within * 1000)
    for queue in queues:
        if await workers[0].pool.zrangebyscore(queue, "-inf", horizon):
            return False
    return True
