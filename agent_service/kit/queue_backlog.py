"""How long the oldest job of an arq queue has been waiting for a worker: the backlog age behind
the `agent_queue_backlog_age_seconds` gauge (an alert on a stuck or understaffed queue).

A job is waiting from the moment it is due, `max(enqueue time, its score)`: a job scheduled for
later, or a retry deferred, only waits from its time on; a job queued to run now has a score up
to two minutes before its enqueue time (priority head start and fairness window, see
tasks/queue.py), so the score alone would age a fresh job by minutes. The enqueue time comes from
arq's job record. arq keeps a running job in its queue: those are not waiting.
"""

from __future__ import annotations

from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import DeserializationError, deserialize_job_raw

from agent_service.kit import serializer
from agent_service.kit.redis import RedisConn, redis_guard

# the lowest-scored due jobs looked at: running ones sit among them (one per busy job slot), and a
# job's due time is at most two minutes after its score, so beyond these the oldest is not hiding
SCAN_LIMIT = 200


@redis_guard
async def backlog_age(redis: RedisConn, queue_name: str, *, now_ms: int) -> float:
    """Seconds the oldest due, not running job has waited; 0.0 for an empty backlog."""
    due = await redis.zrangebyscore(queue_name, "-inf", now_ms, start=0, num=SCAN_LIMIT, withscores=True)
    if not due:
        return 0.0
    pipe = redis.pipeline(transaction=False)
    for job_id, _ in due:
        pipe.exists(in_progress_key_prefix + job_id.decode())
        pipe.get(job_key_prefix + job_id.decode())
    replies = await pipe.execute()
    oldest = 0.0
    for i, (_, score) in enumerate(due):
        running, raw = replies[2 * i], replies[2 * i + 1]
        if running or raw is None:  # started, or ended and gone between the two reads
            continue
        try:
            enqueued_ms = deserialize_job_raw(raw, deserializer=serializer.deserialize)[4]
        except DeserializationError:
            enqueued_ms = score  # not ours to judge: its score is the best time there is
        oldest = max(oldest, (now_ms - max(float(enqueued_ms or 0), score)) / 1000)
    return oldest
