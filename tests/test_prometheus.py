"""A real Prometheus (Debian's `prometheus`, scripts/install-prometheus) scraping the real service
(uvicorn + a worker process), queried over its HTTP API; the alert rules of
deploy/prometheus-alerts.yml checked and unit-tested by promtool, loaded into that Prometheus and
evaluated there; deploy/grafana-dashboard.json naming only metrics that /metrics has, and every
one of its queries run by that Prometheus.

Without the binaries these tests skip, unless CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent_service.cli.embedded import free_port
from agent_service.config import Settings
from tests.support.apps import app_client
from tests.support.environment import ROOT
from tests.support.processes import E2E_EMAIL, Live, Process
from tests.support.waiting import wait_http_ok, wait_until

pytestmark = pytest.mark.sqlite_only  # metrics and their queries: no SQL of their own

DEPLOY = ROOT / "deploy"
ALERTS, ALERT_TESTS, DASHBOARD = (DEPLOY / "prometheus-alerts.yml", DEPLOY / "prometheus-alerts.test.yml",
                                  DEPLOY / "grafana-dashboard.json")
TOKEN = "prometheus-scrape-token-0123456789"
SCRAPE_JOB = "agent_service"
METRIC_NAME = re.compile(r"\b(?:agent|http)_[a-z0-9_]+\b")
# Grafana's variables, as its query editor would expand them with "All" chosen
GRAFANA_VARS = {"$__rate_interval": "1m", "$route": ".*", "$task_kind": ".*"}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no {name} binary: run scripts/install-prometheus (as root)")
        pytest.skip(f"no {name} binary (scripts/install-prometheus installs Debian's prometheus)")
    return found


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], cwd=DEPLOY, capture_output=True, text=True, timeout=30)


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


# --- the deploy files on their own ----------------------------------------------------------

def test_alert_rules_pass_promtool_check() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 4 rules found" in out.stdout


def test_alert_rules_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(ALERT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


async def test_dashboard_and_alerts_name_only_metrics_that_exist(settings: Settings) -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] and board["title"]
    async with app_client(settings, authenticated=False) as c:
        await c.get("/health/live")
        text = (await c.get("/metrics")).text
    exposed: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        exposed |= {family.name + s for s in suffixes.get(family.type, ("",))}
    for source, exprs in (("dashboard", dashboard_queries()), ("alerts", alert_exprs())):
        named = {m for e in exprs for m in METRIC_NAME.findall(e)}
        assert named and named <= exposed, f"{source} names metrics /metrics lacks: {sorted(named - exposed)}"
    # what the dashboard is for: requests, jobs, queue, workers
    shown = {m for e in dashboard_queries() for m in METRIC_NAME.findall(e)}
    assert {"http_requests_total", "http_request_duration_seconds_bucket", "agent_jobs_succeeded_total",
            "agent_jobs_failed_total", "agent_queue_depth", "agent_queue_backlog_age_seconds",
            "agent_workers_alive", "agent_worker_heartbeat_age_seconds"} <= shown


# --- a real Prometheus scraping the real service --------------------------------------------

class Prometheus:
    def __init__(self, base: str, proc: Process) -> None:
        self.base, self.proc = base, proc

    def get(self, path: str, **params: str) -> Any:
        resp = httpx.get(f"{self.base}{path}", params=params, timeout=5)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def diagnosis(self) -> str:
        targets = httpx.get(f"{self.base}/api/v1/targets", timeout=5).text
        return f"targets: {targets[:2000]}\nprometheus log: {self.proc.output()[-2000:]}"

    def wait_at_least(self, expr: str, minimum: float, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll until `expr` returns series all at least `minimum` (scrapes are 1 s apart)."""
        def met() -> list[dict[str, Any]] | None:
            result = self.query(expr)
            return result if result and all(float(r["value"][1]) >= minimum for r in result) else None

        found: list[dict[str, Any]] = wait_until(met, timeout=timeout, interval=0.25,
                                                 message=lambda: f"{expr} never >= {minimum}\n{self.diagnosis()}")
        return found


@pytest.fixture
def metrics_token(env: dict[str, str]) -> str:
    """The service is started with METRICS_TOKEN (before `live_service` reads `env`)."""
    env["METRICS_TOKEN"] = TOKEN
    return TOKEN


@pytest.fixture
def live(metrics_token: str, live_service: Live) -> Live:
    return live_service


@pytest.fixture
def prometheus(live: Live, tmp_path: Path) -> Iterator[Prometheus]:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN)
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": SCRAPE_JOB, "metrics_path": "/metrics",
            "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
            "static_configs": [{"targets": [live.base.removeprefix("http://")]}],
        }],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config, indent=2))
    port = free_port()
    proc = Process([binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                   dict(os.environ), tmp_path / "prometheus.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/-/ready", on_fail=lambda: proc.output()[-3000:])
        yield Prometheus(base, proc)
    finally:
        proc.stop()


def run_the_jobs(live: Live, env: dict[str, str]) -> None:
    """One success, one failure, a maintenance job queued by hand, and a 401 refused before routing."""
    for body in ({"message": "hello"}, {"message": "no", "metadata": {"fail": "permanent"}}):
        resp = httpx.post(f"{live.base}/api/v1/agents/echo/invoke-async", json=body, headers=live.headers)
        assert resp.status_code == 202, resp.text
    by_hand = subprocess.run([sys.executable, "-m", "agent_service", "enqueue", "--job", "cleanup_temp_files",
                              "--as", E2E_EMAIL], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=30)
    assert by_hand.returncode == 0, by_hand.stderr
    refused = httpx.get(f"{live.base}/api/v1/agents/tasks/abc", headers={"X-API-Key": "not-a-key"})
    assert refused.status_code == 401


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_real_prometheus_finds_every_series_by_its_labels(
    live: Live, prometheus: Prometheus, env: dict[str, str]
) -> None:
    prometheus.wait_at_least(f'up{{job="{SCRAPE_JOB}"}}', 1)  # scraped, with the token
    run_the_jobs(live, env)

    ok = prometheus.wait_at_least(
        'sum by (task_kind) (agent_jobs_succeeded_total{task_kind="invoke_agent_async"})', 1)
    assert ok[0]["metric"] == {"task_kind": "invoke_agent_async"}
    prometheus.wait_at_least('sum by (task_kind) (agent_jobs_failed_total{task_kind="invoke_agent_async"})', 1)
    prometheus.wait_at_least('sum by (task_kind) (agent_jobs_succeeded_total{task_kind="cleanup_temp_files"})', 1)
    prometheus.wait_at_least('sum(agent_job_duration_seconds_count{task_kind="cleanup_temp_files"})', 1)
    prometheus.wait_at_least(
        'sum by (route) (http_requests_total{route="/api/v1/agents/tasks/{task_id}", status="401"})', 1)
    # `job` is Prometheus' scrape job on every series of ours, nothing of ours renamed beside it
    started = prometheus.wait_at_least(f'agent_jobs_started_total{{job="{SCRAPE_JOB}"}}', 1)
    assert {r["metric"]["task_kind"] for r in started} >= {"invoke_agent_async", "cleanup_temp_files"}
    for renamed in ("exported_job", "exported_instance"):
        assert prometheus.query(f'count({{{renamed}!=""}})') == [], renamed
    assert prometheus.query(f'count({{__name__=~"(agent|http)_.+", job!="{SCRAPE_JOB}"}})') == []
    assert not [r for r in prometheus.query('{__name__=~"(agent|http)_.+"}')
                if {"exported_job", "exported_instance"} & r["metric"].keys()]
    prometheus.wait_at_least("max(agent_workers_alive)", 1)
    prometheus.wait_at_least(f'count(agent_worker_heartbeat_age_seconds{{job="{SCRAPE_JOB}"}})', 1)
    assert prometheus.query("agent_queue_backlog_age_seconds")  # a gauge there is, even when nothing waits

    # every dashboard query runs (the API answers 400 for one that does not parse)
    for expr in dashboard_queries():
        if expr.startswith("label_values("):
            name, _, label = expr.removeprefix("label_values(").removesuffix(")").partition(", ")
            assert prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": name}), expr
        else:
            prometheus.get("/api/v1/query", query=expand(expr))

    # the alert rules, evaluated on this data: all healthy, and a worker is alive
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_until(evaluated, timeout=15, interval=0.25, message=prometheus.diagnosis)
    assert {r["name"] for r in rules} == {"AgentJobFailureRateHigh", "AgentMaintenanceJobFailed",
                                          "AgentQueueBacklogOld", "AgentNoWorkerHeartbeat"}
    assert next(r for r in rules if r["name"] == "AgentNoWorkerHeartbeat")["state"] == "inactive"
