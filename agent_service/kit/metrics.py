"""Job metrics kept in Redis, so every worker's counts add up and the web process exports them.

Counters and histogram buckets are hash fields incremented in one pipeline per event, or, in a
worker (`buffer`), added up in the process and written in one pipeline every FLUSH_SECONDS (a
busy worker would otherwise spend a round trip per event on them). Metrics are best effort: a
Redis error is logged at debug level and never fails a job or a request; buffered increments that
could not be written are kept for the next flush.

Every event is labelled by its task kind: the arq function of an agent job
(`invoke_agent_async`, `invoke_agent_with_streaming`) or a maintenance job's name
(`cleanup_expired_sessions`, …). Exported as the label `task_kind`, never `job`: Prometheus
owns `job` and `instance` (its scrape labels) and would rename ours to `exported_job`.
"""

from __future__ import annotations

import asyncio
import contextlib
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


FLUSH_SECONDS = 0.1


class JobMetrics:
    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self.counters_key = f"{prefix}metrics:counters"
        self.hist_key = f"{prefix}metrics:histograms"
        self._every: float | None = None  # buffering off: each event is written at once
        self._ints: dict[tuple[str, str], int] = {}  # (hash, field) -> increment not yet written
        self._floats: dict[tuple[str, str], float] = {}
        self._flusher: asyncio.Task[None] | None = None

    def buffer(self, every: float = FLUSH_SECONDS) -> None:
        """Add events up in this process and write them every `every` seconds (a worker), in
        the order they happened: a reader that sees an event sees every one before it."""
        self._every = every

    def _add(self, counters: dict[str, int], observations: list[tuple[str, str, float]]) -> None:
        ints, floats = self._ints, self._floats
        for name, n in counters.items():
            ints[self.counters_key, name] = ints.get((self.counters_key, name), 0) + n
        for metric, label, value in observations:
            for le in HISTOGRAMS[metric]:
                if value <= le:
                    key = (self.hist_key, f"{metric}|{label}|{le}")
                    ints[key] = ints.get(key, 0) + 1
            count = (self.hist_key, f"{metric}|{label}|count")
            ints[count] = ints.get(count, 0) + 1
            total = (self.hist_key, f"{metric}|{label}|sum")
            floats[total] = floats.get(total, 0.0) + value

    async def _apply(self, counters: dict[str, int], observations: list[tuple[str, str, float]]) -> None:
        self._add(counters, observations)
        if self._every is None:
            await self.flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(self._every))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)  # one write for everything that happens meanwhile
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Write what was added up, in one MULTI (readers never see half of it)."""
        ints, floats = self._ints, self._floats
        if not ints and not floats:
            return
        self._ints, self._floats = {}, {}
        try:
            pipe = self._redis.pipeline(transaction=True)
            for (key, field), n in ints.items():
                pipe.hincrby(key, field, n)
            for (key, field), x in floats.items():
                pipe.hincrbyfloat(key, field, x)
            await pipe.execute()
        except (RedisError, OSError):
            log.debug("metrics.unavailable")
            if self._every is not None:  # kept for the next flush (the fields are few: it stays small)
                for k, n in ints.items():
                    self._ints[k] = self._ints.get(k, 0) + n
                for k, x in floats.items():
                    self._floats[k] = self._floats.get(k, 0.0) + x

    async def close(self) -> None:
        """Write what is still buffered (a worker shutting down)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()

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

    async def usage(self, model: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        """An agent run's tokens and cost (USD, counted in micro-dollars: the counters are integers), by model."""
        counters = {f"usage_input_tokens|{model}": input_tokens, f"usage_output_tokens|{model}": output_tokens}
        if cost is not None:
            counters[f"usage_cost_microusd|{model}"] = round(cost * 1_000_000)
        await self._apply(counters, [])

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
