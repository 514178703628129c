"""GET /metrics in the Prometheus text format.

HTTP metrics are per web process (a registry of its own per app). Job metrics come from Redis,
where every worker adds its counts, so any web process exports the whole deployment's job
numbers — no second port on the worker. Protected by METRICS_TOKEN when it is set.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import Scope

from agent_service.errors import AppError, Unauthorized
from agent_service.kit import context
from agent_service.kit.endpoint import operation, route
from agent_service.kit.metrics import EVENTS, HISTOGRAMS, parse_field
from agent_service.logging import get_logger

log = get_logger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "<unmatched>"


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


def route_template(scope: Scope) -> str:
    """The templated path incl. the mount prefix; never the raw path (bounded label values).

    A path that enters a Mount but matches nothing inside it leaves the Mount itself as
    `scope["route"]`: that is unmatched too, not "<prefix><prefix>".
    """
    matched = scope.get("route")
    path = getattr(matched, "path", None)
    if path is None or isinstance(matched, Mount):
        return UNMATCHED
    return f"{scope.get('root_path', '')}{path}"


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


def _check_token(request: Request) -> None:
    token = context.deps(request).settings.metrics_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("Send `Authorization: Bearer <METRICS_TOKEN>`.", code="invalid_metrics_token",
                           headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


@operation(summary="Prometheus metrics", tag="Admin", public=True, errors=(401,), media_type="text/plain",
           description="HTTP requests by route, status and latency; jobs started, succeeded, failed, retried, "
                       "cancelled and deferred by job name; job duration and enqueue-to-start latency; queue "
                       "depth; rate-limit rejections. Needs `Authorization: Bearer <METRICS_TOKEN>` when that "
                       "setting is set.")
async def metrics_endpoint(request: Request) -> Response:
    _check_token(request)
    deps = context.deps(request)
    registry = CollectorRegistry(auto_describe=False)
    http: HttpMetrics = request.app.state.http_metrics
    registry.register(_Union(http.registry))
    counters: dict[str, int] = {}
    hists: dict[str, float] = {}
    depth: dict[str, int] = {}
    if deps.metrics is not None:
        try:
            counters, hists = await deps.metrics.snapshot()
            depth = await deps.queue.depth(now_ms=int(deps.clock().timestamp() * 1000))
        except (AppError, RedisError, OSError):
            log.warning("metrics.redis_unavailable")  # still export what this process knows
    registry.register(_Snapshot(counters, hists, depth))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)


class _Union(Collector):
    def __init__(self, inner: CollectorRegistry) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        return self._inner.collect()


routes = [route("/metrics", metrics_endpoint, ["GET"])]
