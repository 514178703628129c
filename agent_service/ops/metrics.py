"""The Prometheus exposition behind GET /metrics.

HTTP metrics are per web process (a registry of its own per app). Job metrics come from Redis,
where every worker adds its counts, so any web process exports the whole deployment's job
numbers — no second port on the worker — as do the queue gauges (depth, backlog age) and the
workers' heartbeats. Several web processes scraped thus export the same deployment series: query
those with max(), the per-process HTTP ones with sum(). Protected by METRICS_TOKEN when it is set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.metrics import EVENTS, HISTOGRAMS, WEBHOOK_EVENTS, parse_field
from agent_service.kit.queue_backlog import backlog_age
from agent_service.logging import get_logger
from agent_service.ops.workers import WorkerBoard
from agent_service.tasks import service as tasks

log = get_logger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# never `job` or `instance`: Prometheus sets those on every scraped series (ours would become exported_job)
TASK_KIND = "task_kind"


SERIES_CACHED = 4096


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("http_requests_total", "HTTP requests by route template, method and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency by route template",
                                 ["method", "route"], registry=self.registry)
        # the labelled series of each (method, route, status), looked up once: labels() takes a
        # lock and builds its key on every call, on every request
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route_template: str, status: int, seconds: float) -> None:
        key = (method, route_template, status)
        series = self._series.get(key)
        if series is None:
            series = (self.requests.labels(method, route_template, str(status)),
                      self.latency.labels(method, route_template))
            if len(self._series) < SERIES_CACHED:
                self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)


@dataclass
class _Deployment:
    """What Redis knows of the whole deployment at one scrape (empty when Redis is away: then
    these series are absent, never a false zero)."""

    counters: dict[str, int] = field(default_factory=dict)
    hists: dict[str, float] = field(default_factory=dict)
    depth: dict[str, int] = field(default_factory=dict)
    backlog_age: float | None = None
    workers: list[dict[str, str]] | None = None
    now: datetime | None = None


class _Snapshot(Collector):
    """A one-shot collector over data fetched (asynchronously) just before rendering."""

    def __init__(self, data: _Deployment) -> None:
        self._d = data

    def collect(self) -> Iterable[Metric]:
        yield from self._job_counters()
        yield from self._histograms()
        gauge = GaugeMetricFamily("agent_queue_depth", "Jobs in the arq queue by state", labels=["state"])
        for state, n in sorted(self._d.depth.items()):
            gauge.add_metric([state], n)
        yield gauge
        if self._d.backlog_age is not None:
            yield GaugeMetricFamily("agent_queue_backlog_age_seconds",
                                    "Seconds the oldest due job not yet started has waited (0: none waits)",
                                    value=self._d.backlog_age)
        if self._d.workers is not None:
            yield from self._workers(self._d.workers)

    def _workers(self, workers: list[dict[str, str]]) -> Iterator[Metric]:
        yield GaugeMetricFamily("agent_workers_alive", "Workers whose heartbeat has not expired",
                                value=len(workers))
        age = GaugeMetricFamily("agent_worker_heartbeat_age_seconds", "Seconds since each live worker's "
                                "last heartbeat", labels=["worker_id"])
        running = GaugeMetricFamily("agent_worker_running_jobs", "Jobs each live worker is running",
                                    labels=["worker_id"])
        for w in sorted(workers, key=lambda w: w.get("worker_id", "")):
            wid = w.get("worker_id", "")
            now = self._d.now or datetime.now(UTC)
            try:
                # another host's clock may run ahead: never a negative age
                since = max(0.0, (now - datetime.fromisoformat(w["last_heartbeat"])).total_seconds())
                busy = float(w.get("running") or 0)
            except (KeyError, ValueError, TypeError):
                continue  # a hash not (yet) as a worker writes it: its next beat rewrites it
            age.add_metric([wid], since)
            running.add_metric([wid], busy)
        yield age
        yield running

    def _job_counters(self) -> Iterator[Metric]:
        families = {what: CounterMetricFamily(f"agent_jobs_{what}", f"Agent and maintenance jobs {what}, "
                                              "by task kind", labels=[TASK_KIND]) for what in EVENTS}
        rejections = CounterMetricFamily("agent_rate_limit_rejections", "Requests and jobs over a rate limit",
                                         labels=["kind"])
        webhooks = {what: CounterMetricFamily(f"agent_webhook_deliveries_{what}", f"Webhook delivery attempts {what},"
                                              " by event type", labels=["event"]) for what in WEBHOOK_EVENTS}
        tokens = CounterMetricFamily("agent_usage_tokens", "Tokens agent runs reported, by direction and model",
                                     labels=["direction", "model"])
        cost = CounterMetricFamily("agent_usage_cost_usd", "Cost of agent runs by MODEL_PRICES (USD), by model",
                                   labels=["model"])
        for key, value in sorted(self._d.counters.items()):
            metric, label, _ = parse_field(key)
            what = metric.removeprefix("jobs_")
            if what in families:
                families[what].add_metric([label], value)
            elif metric == "rate_limit_rejections":
                rejections.add_metric([label], value)
            elif metric.removeprefix("webhook_deliveries_") in webhooks:
                webhooks[metric.removeprefix("webhook_deliveries_")].add_metric([label], value)
            elif metric in ("usage_input_tokens", "usage_output_tokens"):
                tokens.add_metric([metric.split("_")[1], label], value)
            elif metric == "usage_cost_microusd":
                cost.add_metric([label], value / 1_000_000)
        yield from families.values()
        yield rejections
        yield from webhooks.values()
        yield tokens
        yield cost

    def _histograms(self) -> Iterator[Metric]:
        per: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for key, value in self._d.hists.items():
            metric, label, le = parse_field(key)
            per[(metric, label)][le] = value
        for metric, buckets in HISTOGRAMS.items():
            fam = HistogramMetricFamily(f"agent_{metric}", f"Agent {metric.replace('_', ' ')}, by task kind",
                                        labels=[TASK_KIND])
            for (name, label), values in sorted(per.items()):
                if name != metric:
                    continue
                cumulative = [(str(le), values.get(str(le), 0.0)) for le in buckets]
                cumulative.append(("+Inf", values.get("count", 0.0)))
                fam.add_metric([label], cumulative, sum_value=values.get("sum", 0.0))
            yield fam


class _Union(Collector):
    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        return self._inner.collect()


async def _deployment(deps: Deps) -> _Deployment:
    data = _Deployment()
    if deps.metrics is None:
        return data
    try:
        data.counters, data.hists = await deps.metrics.snapshot()
        data.depth = await tasks.queue_depth(deps)
        data.now = deps.clock()
        data.backlog_age = await backlog_age(deps.redis, deps.settings.queue_name,
                                             now_ms=int(data.now.timestamp() * 1000))
        data.workers = await WorkerBoard.of(deps).alive()
    except (AppError, RedisError, OSError):
        log.warning("metrics.redis_unavailable")
    return data


async def render(deps: Deps, http: HttpMetrics) -> bytes:
    """This process's HTTP metrics and the deployment's job metrics (from Redis) as Prometheus text;
    with Redis down, what this process knows."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(http.registry))
    registry.register(_Snapshot(await _deployment(deps)))
    return bytes(generate_latest(registry))
