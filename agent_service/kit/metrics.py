"""Job metrics kept in Redis, so every worker's counts add up and the web process exports them.

Counters and histogram buckets are hash fields incremented in one pipeline per event. Metrics
are best effort: a Redis error is logged at debug level and never fails a job or a request.

Every event is labelled by its task kind: the arq function of an agent job
(`invoke_agent_async`, `invoke_agent_with_streaming`) or a maintenance job's name
(`cleanup_expired_sessions`, …). Exported as the label `task_kind`, never `job`: Prometheus
owns `job` and `instance` (its scrape labels) and would rename ours to `exported_job`.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agent_service.logging import get_logger

log = get_logger(__name__)

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HISTOGRAMS = {"job_duration_seconds": DURATION_BUCKETS, "job_enqueue_latency_seconds": LATENCY_BUCKETS}
EVENTS = ("started", "succeeded", "failed", "retried", "cancelled", "deferred", "orphaned")
COUNTERS = EVENTS  # the heartbeat's per-worker counts are the same events
WEBHOOK_EVENTS = ("attempted", "succeeded", "failed")


@dataclass
class WorkerStats:
    """This worker's own counters, sent with its heartbeat."""

    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    running: int = 0

    def bump(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class JobMetrics:
    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self.counters_key = f"{prefix}metrics:counters"
        self.hist_key = f"{prefix}metrics:histograms"

    async def _apply(self, counters: dict[str, int], observations: list[tuple[str, str, float]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for field, n in counters.items():
                pipe.hincrby(self.counters_key, field, n)
            for metric, label, value in observations:
                for le in HISTOGRAMS[metric]:
                    if value <= le:
                        pipe.hincrby(self.hist_key, f"{metric}|{label}|{le}", 1)
                pipe.hincrby(self.hist_key, f"{metric}|{label}|count", 1)
                pipe.hincrbyfloat(self.hist_key, f"{metric}|{label}|sum", value)
            await pipe.execute()
        except (RedisError, OSError):
            log.debug("metrics.unavailable")

    async def event(self, what: str, task_kind: str, *, duration: float | None = None) -> None:
        obs = [("job_duration_seconds", task_kind, duration)] if duration is not None else []
        await self._apply({f"jobs_{what}|{task_kind}": 1}, obs)

    async def enqueue_latency(self, task_kind: str, seconds: float) -> None:
        await self._apply({}, [("job_enqueue_latency_seconds", task_kind, max(0.0, seconds))])

    async def rate_limited(self, kind: str) -> None:
        await self._apply({f"rate_limit_rejections|{kind}": 1}, [])

    async def webhook(self, what: str, event: str) -> None:
        """A webhook delivery attempt (`attempted`) and how it went (`succeeded`, `failed`), by event type."""
        await self._apply({f"webhook_deliveries_{what}|{event}": 1}, [])

    async def snapshot(self) -> tuple[dict[str, int], dict[str, float]]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self.counters_key)
        pipe.hgetall(self.hist_key)
        counters, hists = await pipe.execute()
        return ({k.decode(): int(v) for k, v in counters.items()},
                {k.decode(): float(v) for k, v in hists.items()})


def parse_field(field: str) -> tuple[str, str, str]:
    """`metric|label|le` → its three parts (le is "" for counters)."""
    metric, _, rest = field.partition("|")
    label, _, le = rest.rpartition("|") if rest.count("|") else (rest, "", "")
    return metric, label, le
