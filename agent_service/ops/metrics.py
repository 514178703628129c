"""The Prometheus exposition behind GET /metrics.

HTTP metrics are per web process (a registry of its own per app). Job metrics come from Redis,
where every worker adds its counts, so any web process exports the whole deployment's job
numbers — no second port on the worker. Protected by METRICS_TOKEN when it is set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from agent_service.errors import AppError
from agent_service.kit.deps import Deps
from agent_service.kit.metrics import EVENTS, HISTOGRAMS, parse_field
from agent_service.logging import get_logger
from agent_service.tasks import service as tasks

log = get_logger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("http_requests_total", "HTTP requests by route template, method and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "HTTP request latency by route template",
                                 ["method", "route"], registry=self.registry)

    def observe(self, method: str, route_template: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route_template, str(status)).inc()
        self.latency.labels(method, route_template).observe(seconds)


class _Snapshot(Collector):
    """A one-shot collector over data fetched (asynchronously) just before rendering."""

    def __init__(self, counters: dict[str, int], hists: dict[str, float], depth: dict[str, int]) -> None:
        self._counters, self._hists, self._depth = counters, hists, depth

    def collect(self) -> Iterable[Metric]:
        yield from self._job_counters()
        yield from self._histograms()
        gauge = GaugeMetricFamily("agent_queue_depth", "Jobs in the arq queue by state", labels=["state"])
        for state, n in sorted(self._depth.items()):
            gauge.add_metric([state], n)
        yield gauge

    def _job_counters(self) -> Iterator[Metric]:
        families = {what: CounterMetricFamily(f"agent_jobs_{what}", f"Agent jobs {what}, by job name",
                                              labels=["job"]) for what in EVENTS}
        rejections = CounterMetricFamily("agent_rate_limit_rejections", "Requests and jobs over a rate limit",
                                         labels=["kind"])
        for field, value in sorted(self._counters.items()):
            metric, label, _ = parse_field(field)
            what = metric.removeprefix("jobs_")
            if what in families:
                families[what].add_metric([label], value)
            elif metric == "rate_limit_rejections":
                rejections.add_metric([label], value)
        yield from families.values()
        yield rejections

    def _histograms(self) -> Iterator[Metric]:
        per: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for field, value in self._hists.items():
            metric, label, le = parse_field(field)
            per[(metric, label)][le] = value
        for metric, buckets in HISTOGRAMS.items():
            fam = HistogramMetricFamily(f"agent_{metric}", f"Agent {metric.replace('_', ' ')}", labels=["job"])
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


async def render(deps: Deps, http: HttpMetrics) -> bytes:
    """This process's HTTP metrics and the deployment's job metrics (from Redis) as Prometheus text;
    with Redis down, what this process knows."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(http.registry))
    counters: dict[str, int] = {}
    hists: dict[str, float] = {}
    depth: dict[str, int] = {}
    if deps.metrics is not None:
        try:
            counters, hists = await deps.metrics.snapshot()
            depth = await tasks.queue_depth(deps)
        except (AppError, RedisError, OSError):
            log.warning("metrics.redis_unavailable")
    registry.register(_Snapshot(counters, hists, depth))
    return bytes(generate_latest(registry))
